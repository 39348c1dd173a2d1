# Device call 2 of performance round 5 (issue #15): GPU tests of the channels-last UNet and the NHWC
# GroupNorm kernels; where a fresh process's seconds go (fresh_start.py, stage timelines); the op profile;
# `tav bench` on the working tree (fresh-process runs included) and on b4c47b1 (.perf/before, in-process only).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton
R=benchmarks/results/2026-12-03-h200-round5
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/machine.txt
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.backends.cudnn.version())" >> $OUT/machine.txt
timed() { local s=$EPOCHREALTIME; "${@:2}"; echo "$1: $(python3 -c "print(round($EPOCHREALTIME - $s, 2))") s" >> $OUT/machine.txt; }
timed "python3 -c pass" python3 -c pass
timed "build random:sd-v1 and the clip" python3 -c "from tavcli.app import builtin; builtin.locate('random:sd-v1'); builtin.synthetic_clip(__import__('pathlib').Path('/tmp/clip.mp4'), 8, 512)"
tune="tune /tmp/clip.mp4 skiing --base random:sd-v1 --frames 8 --size 512 --json"
# the machine's first tune compiles the Triton kernels (a later process loads them)
TAV_HOME=/tmp/h0 timeout 100 python3 benchmarks/stamp.py python3 -m tavcli $tune --steps 20 > $OUT/timeline-tune-first.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_triton_groupnorm.py tests/test_triton_temporal.py tests/test_layout.py tests/test_geglu.py > $OUT/gpu-tests.txt 2>&1; tail -3 $OUT/gpu-tests.txt
for way in to direct tav; do timeout 60 python3 benchmarks/fresh_start.py --load $way >> $OUT/fresh_start.jsonl 2>> $OUT/log.txt; done
TAV_HOME=/tmp/h1 timeout 100 python3 benchmarks/stamp.py python3 -m tavcli $tune --steps 300 > $OUT/timeline-tune300.txt
id=$(TAV_HOME=/tmp/h1 python3 -m tavcli list --json | python3 -c "import json, sys; print(json.load(sys.stdin)[0]['id'])")
TAV_HOME=/tmp/h1 timeout 40 python3 benchmarks/stamp.py python3 -m tavcli edit $id "a panda is skiing" --out-dir /tmp/o --json > $OUT/timeline-edit.txt
timeout 90 python3 benchmarks/profile_step.py --ops --json $OUT/profile.json > $OUT/profile.txt 2>> $OUT/log.txt
timeout 200 python3 -m tavcli bench --json > $OUT/bench8.json 2>> $OUT/log.txt
(cd .perf/before && PYTHONPATH=/tmp/site:$PWD timeout 80 python3 -m tavcli bench --json --fresh-tune-steps 0 --edit-prompts 0 --no-preview --edit-strength 1 > $OUT/bench8-before.json 2>> $OUT/log.txt)
cat $OUT/machine.txt $OUT/fresh_start.jsonl $OUT/timeline-*.txt; head -12 $OUT/profile.txt
for f in bench8 bench8-before; do python3 -c "import json; d = json.load(open('$OUT/$f.json')); d.pop('settings', None); print('$f', d)"; done
