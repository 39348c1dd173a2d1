# Device call 2 of performance round 7 (issue #15): the GPU tests (the temporal kernels as batched
# matmuls), the sweep of temporal-attention plans again with them, and `tav bench` on this tree (the first
# two frames' keys attended once at the 64x64 level, the held temporal kernel there).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton TAV_HOME=/tmp/store
SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_triton_temporal.py > $OUT/gpu-tests.txt 2>&1
tail -n 4 $OUT/gpu-tests.txt; grep -m 20 "^FAILED\|Error" $OUT/gpu-tests.txt
timeout 240 python3 benchmarks/kernel_sweep.py --kinds temporal --json $OUT/sweep.json > $OUT/sweep-log.txt 2>&1
python3 -c "import json; t = json.load(open('$OUT/sweep.json'))['totals']; [print(k, json.dumps(v)) for k, v in t.items()]"
grep -m 10 error $OUT/sweep-log.txt
python3 -m compileall -q -j 16 $SITE /tmp/site tavcli
timeout 220 python3 -m tavcli bench --json > $OUT/bench8.json 2> $OUT/log.txt
tail -n 3 $OUT/log.txt
python3 -c "import json; d = json.load(open('$OUT/bench8.json')); d.pop('settings', None); print(d)"
