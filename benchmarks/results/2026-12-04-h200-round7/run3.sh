# Device call 3 of performance round 7 (issue #15): the GPU tests on this tree (the temporal attention as
# batched matmuls, the first frames' keys attended once), the temporal sweep of the final kernels, and
# `tav bench` at its defaults and at 24 frames, bytecode compiled once as pip leaves an install.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton TAV_HOME=/tmp/store
SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m compileall -q -j 16 $SITE /tmp/site tavcli
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_triton_temporal.py tests/test_triton_groupnorm.py tests/test_layout.py tests/test_geglu.py > $OUT/gpu-tests.txt 2>&1
tail -n 3 $OUT/gpu-tests.txt; grep -m 20 "^FAILED\|Error" $OUT/gpu-tests.txt
timeout 150 python3 benchmarks/kernel_sweep.py --kinds temporal --json $OUT/sweep.json > $OUT/sweep-log.txt 2>&1
python3 -c "import json; t = json.load(open('$OUT/sweep.json'))['totals']; [print(k, json.dumps(v)) for k, v in t.items()]"
grep -m 5 error $OUT/sweep-log.txt
timeout 200 python3 -m tavcli bench --json > $OUT/bench8.json 2> $OUT/log.txt
timeout 120 python3 -m tavcli bench --frames 24 --fresh-tune-steps 0 --edit-prompts 0 --no-preview --edit-strength 1 --json > $OUT/bench24.json 2>> $OUT/log.txt
tail -n 3 $OUT/log.txt
for f in bench8 bench24; do python3 -c "import json; d = json.load(open('$OUT/$f.json')); d.pop('settings', None); print('$f', d)"; done
