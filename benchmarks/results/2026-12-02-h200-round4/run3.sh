# Device call 4 of performance round 4 (issue #15): the temporal attention's 64x64 level through cuDNN
# when tuning (memory-efficient before, in run2.sh); `tav bench` with --low-memory, then at its defaults
# without the fresh-process runs; each in a fresh process.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/machine.txt
one="--fresh-tune-steps 0 --edit-prompts 0 --no-preview --edit-strength 1"
timeout 80 python3 -m tavcli bench --json --low-memory --steps 15 $one > $OUT/lowmem8.json 2> $OUT/log.txt
timeout 100 python3 -m tavcli bench --json $one > $OUT/bench8.json 2>> $OUT/log.txt
for f in lowmem8 bench8; do python3 -c "import json; d = json.load(open('$OUT/$f.json')); d.pop('settings', None); print('$f', d)"; done
