# Device call 2 of performance round 8 (issue #15): the Triton sparse-causal forward (tests, the per-level
# sweep of its plans against SDPA), the memory of each --low-memory step with and without CUDA graphs, and
# `tav bench` (no fresh processes, no preview) with the kernel on its first plans and one warm-up per capture.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton TAV_HOME=/tmp/store
SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m compileall -q -j 16 $SITE /tmp/site tavcli
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_triton_sparse_causal.py tests/test_gpu.py tests/test_triton_temporal.py > $OUT/gpu-tests.txt 2>&1
tail -n 2 $OUT/gpu-tests.txt; grep -m 20 "^FAILED\|Error" $OUT/gpu-tests.txt
timeout 120 python3 benchmarks/sparse_causal_sweep.py --json $OUT/sweep.json > $OUT/sweep.txt 2>&1
python3 -c "
import json; rows = json.load(open('$OUT/sweep.json'))['rows']
for r in rows: print(r['side'], r['work'], r['way'], r.get('ms'), r.get('first_s'), r.get('max_abs_diff'), r.get('error', '')[:80])
" || tail -n 20 $OUT/sweep.txt
timeout 100 python3 benchmarks/step_peaks.py --low-memory --json $OUT/peaks.json 2>&1 | grep -v Loading | tail -n 3
timeout 150 python3 -m tavcli bench --fresh-tune-steps 0 --no-preview --json > $OUT/bench8.json 2> $OUT/log.txt
python3 -c "import json; d = json.load(open('$OUT/bench8.json')); d.pop('settings', None); print(d)"
