# Device call 3 of performance round 8 (issue #15): the sparse-causal kernel with its head dim a constant
# (aligned, vectorised loads at head dim 40) and one loop over both key frames; taken below 64x64 by `auto`.
# GPU tests, the per-level sweep, `tav bench` (defaults: fresh processes, 8 prompts, preview, strength), and
# the inversion and edit with the kernel at every level (64x64 too) for the comparison.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton TAV_HOME=/tmp/store
SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m compileall -q -j 16 $SITE /tmp/site tavcli
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/machine.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_triton_sparse_causal.py tests/test_gpu.py tests/test_triton_temporal.py > $OUT/gpu-tests.txt 2>&1
tail -n 2 $OUT/gpu-tests.txt; grep -m 20 "^FAILED\|Error" $OUT/gpu-tests.txt
timeout 100 python3 benchmarks/sparse_causal_sweep.py --json $OUT/sweep.json > $OUT/sweep.txt 2>&1
python3 -c "
import json; rows = json.load(open('$OUT/sweep.json'))['rows']
for r in rows: print(r['side'], r['work'], r['way'], r.get('ms'), r.get('first_s'), r.get('max_abs_diff'), r.get('error', '')[:80])
" || tail -n 20 $OUT/sweep.txt
timeout 230 python3 -m tavcli bench --json > $OUT/bench8.json 2> $OUT/log.txt
python3 -c "import json; d = json.load(open('$OUT/bench8.json')); d.pop('settings', None); print(d)"
B="--steps 5 --fresh-tune-steps 0 --edit-prompts 0 --no-preview --edit-strength 1 --json"
timeout 60 python3 -c "import sys; import tavcli.engine.runtime as r; r._FUSED_FRAMES_BELOW = 1 << 30; sys.argv = ['tav', 'bench', *'$B'.split()]; from tavcli.faces.cli import run; run()" > $OUT/bench8-triton-everywhere.json 2>> $OUT/log.txt
python3 -c "import json; d = json.load(open('$OUT/bench8-triton-everywhere.json')); d.pop('settings', None); print(d)"
