# Device call 3 of performance round 4 (issue #15): the final tree. GPU tests, then `tav bench` at its
# defaults (8 frames, with the fresh-process tune and edit and the 8-prompt edit), at 24 frames and with
# --low-memory; each in a fresh process, in this order.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/machine.txt
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_triton_temporal.py tests/test_triton_groupnorm.py tests/test_gpu.py > $OUT/gpu-tests.txt 2>&1; tail -2 $OUT/gpu-tests.txt
timeout 250 python3 -m tavcli bench --json > $OUT/bench8.json 2> $OUT/log.txt
one="--steps 15 --fresh-tune-steps 0 --edit-prompts 0 --no-preview --edit-strength 1"
timeout 100 python3 -m tavcli bench --json --frames 24 $one > $OUT/bench24.json 2>> $OUT/log.txt
timeout 80 python3 -m tavcli bench --json --low-memory $one > $OUT/lowmem8.json 2>> $OUT/log.txt
for f in bench8 bench24 lowmem8; do python3 -c "import json; d = json.load(open('$OUT/$f.json')); d.pop('settings', None); print('$f', d)"; done
