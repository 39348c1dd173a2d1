# Device call 1 of performance round 6 (issue #15): why a fresh process spends ~20 s importing on this machine
# (bytecode), a fresh `tav tune`/`tav edit` timeline, and the 24-frame and --low-memory figures round 5 left.
R=benchmarks/results/2026-12-04-h200-round6
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton TAV_HOME=/tmp/store
TIMEFORMAT=%R
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc; grep -m1 "model name" /proc/cpuinfo
  df -h /tmp /opt $PWD; python3 $R/probe_env.py; } > $OUT/env.txt 2>&1
IMP='import torch; from diffusers import AutoencoderKL, UNet2DConditionModel; from transformers import CLIPTextModel; import tavcli.app.jobs, tavcli.method.pipeline'
tm() { local label=$1; shift; { time "$@" ; } 2> /tmp/t.txt; echo "$label $(tail -1 /tmp/t.txt) s" >> $OUT/times.txt; }
tm "python3 -c pass" python3 -c pass
tm "import torch (1)" python3 -c "import torch"
tm "import torch (2)" python3 -c "import torch"
tm "imports, as installed (1)" python3 -X importtime -c "$IMP" 2> $OUT/importtime-installed.txt
tm "imports, as installed (2)" python3 -c "$IMP"
tm "compileall /tmp/site" python3 -m compileall -q -j 16 /tmp/site
tm "imports, /tmp/site compiled" python3 -X importtime -c "$IMP" 2> $OUT/importtime-compiled.txt
export PYTHONPYCACHEPREFIX=/tmp/pyc
tm "imports, pycache prefix (1: fills it)" python3 -c "$IMP"
tm "imports, pycache prefix (2)" python3 -X importtime -c "$IMP" 2> $OUT/importtime-prefix.txt
tm "import torch, pycache prefix" python3 -c "import torch"
cat $OUT/times.txt
tm "random base and clip" python3 -c "
from pathlib import Path; from tavcli.app import builtin
print(builtin.locate('random:sd-v1')); builtin.synthetic_clip(Path('/tmp/clip.mp4'), 8, 512)" > /tmp/base.txt
BASE=$(tail -1 /tmp/base.txt)
timeout 120 python3 benchmarks/stamp.py python3 -m tavcli tune /tmp/clip.mp4 "a man is skiing" --base random:sd-v1 --frames 8 --size 512 --steps 300 --json > $OUT/fresh-tune-timeline.txt 2>&1
ID=$(grep -o 'stored [0-9a-f]*' $OUT/fresh-tune-timeline.txt | cut -d' ' -f2)
timeout 80 python3 benchmarks/stamp.py python3 -m tavcli edit $ID "a panda is skiing" --out-dir /tmp/edits --json > $OUT/fresh-edit-timeline.txt 2>&1
tail -3 $OUT/fresh-tune-timeline.txt $OUT/fresh-edit-timeline.txt
B="--fresh-tune-steps 0 --edit-prompts 0 --no-preview --edit-strength 1 --json"
timeout 150 python3 -m tavcli bench --frames 24 $B > $OUT/bench24.json 2>> $OUT/log.txt
timeout 100 python3 -m tavcli bench --low-memory $B > $OUT/bench8-lowmem.json 2>> $OUT/log.txt
timeout 150 python3 -m tavcli bench --frames 24 --low-memory $B > $OUT/bench24-lowmem.json 2>> $OUT/log.txt
tail -5 $OUT/log.txt
for f in bench24 bench8-lowmem bench24-lowmem; do python3 -c "import json; d = json.load(open('$OUT/$f.json')); d.pop('settings', None); print('$f', d)"; done
