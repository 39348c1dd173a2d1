# Device call 2 of performance round 6 (issue #15): the GPU tests on this tree (the GroupNorm kernels'
# shared row-sum helper), then the fresh-process figures with the packages' bytecode compiled once, as pip
# leaves an install (this image ships torch without bytecode and sets PYTHONDONTWRITEBYTECODE=1).
R=benchmarks/results/2026-12-04-h200-round6
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton TAV_HOME=/tmp/store
TIMEFORMAT=%R
tm() { local label=$1; shift; { time "$@" ; } 2> /tmp/t.txt; echo "$label $(tail -n 1 /tmp/t.txt) s" >> $OUT/times.txt; }
tm "GPU tests" timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_triton_groupnorm.py tests/test_triton_temporal.py tests/test_layout.py tests/test_geglu.py > $OUT/gpu-tests.txt 2>&1
tail -n 3 $OUT/gpu-tests.txt
SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
tm "compileall site-packages, /tmp/site and tavcli (-j 16)" python3 -m compileall -q -j 16 $SITE /tmp/site tavcli
tm "import torch, compiled" python3 -c "import torch"
for i in 1 2; do timeout 60 python3 benchmarks/fresh_start.py --load tav >> $OUT/fresh_start.jsonl 2>> $OUT/log.txt; done
python3 -X importtime -c 'import torch; from diffusers import AutoencoderKL, UNet2DConditionModel; from transformers import CLIPTextModel; import tavcli.app.jobs, tavcli.method.pipeline' 2> $OUT/importtime-compiled.txt
cat $OUT/times.txt $OUT/fresh_start.jsonl
tm "tav bench --json" timeout 300 python3 -m tavcli bench --json > $OUT/bench8.json 2>> $OUT/log.txt
python3 -c "from pathlib import Path; from tavcli.app import builtin; builtin.synthetic_clip(Path('/tmp/clip.mp4'), 8, 512)"
timeout 90 python3 benchmarks/stamp.py python3 -m tavcli tune /tmp/clip.mp4 "a man is skiing" --base random:sd-v1 --frames 8 --size 512 --steps 300 > $OUT/fresh-tune-timeline.txt 2>&1
ID=$(grep -o 'stored [0-9a-f]*' $OUT/fresh-tune-timeline.txt | cut -d' ' -f2)
timeout 60 python3 benchmarks/stamp.py python3 -m tavcli edit $ID "a panda is skiing" --out-dir /tmp/edits > $OUT/fresh-edit-timeline.txt 2>&1
cat $OUT/fresh-tune-timeline.txt $OUT/fresh-edit-timeline.txt; tail -n 4 $OUT/log.txt; cat $OUT/times.txt
python3 -c "import json; d = json.load(open('$OUT/bench8.json')); d.pop('settings', None); print(d)"
