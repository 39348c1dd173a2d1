# Device call 2 of performance round 5 (issue #15), after call 1's Triton compile errors were fixed: the
# GPU tests, `tav bench` on the working tree (fresh-process runs included), the op profile.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/machine.txt
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_triton_groupnorm.py tests/test_triton_temporal.py tests/test_layout.py tests/test_geglu.py > $OUT/gpu-tests.txt 2>&1; tail -3 $OUT/gpu-tests.txt
timeout 230 python3 -m tavcli bench --json > $OUT/bench8.json 2> $OUT/log.txt
timeout 80 python3 benchmarks/profile_step.py --ops --json $OUT/profile.json > $OUT/profile.txt 2>> $OUT/log.txt
head -30 $OUT/profile.txt; tail -5 $OUT/log.txt
python3 -c "import json; d = json.load(open('$OUT/bench8.json')); d.pop('settings', None); print(d)"
