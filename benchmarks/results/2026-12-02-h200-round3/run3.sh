# Device call 3 of performance round 3 (issue #15): the final tree (attention kernel auto) in .perf/after.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
cd .perf/after
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/machine.txt
timeout 230 python3 -m tavcli bench --json --edit-prompts 0 > $OUT/bench8_final.json 2> $OUT/log.txt
python3 -c "import json; d = json.load(open('$OUT/bench8_final.json')); d.pop('settings'); print(d)"
