# Device call 4 of performance round 8 (issue #15), the final tree: the sparse-causal kernel in the inversion
# at every level and in guided calls below 64x64. `tav bench` with its defaults (fresh processes, 8 prompts,
# preview, strength), at 24 frames, --low-memory at 8 and 24, and the sampling calls' profile.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton TAV_HOME=/tmp/store
SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m compileall -q -j 16 $SITE /tmp/site tavcli
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/machine.txt
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "fused or low_memory" > $OUT/gpu-tests.txt 2>&1
tail -n 1 $OUT/gpu-tests.txt
timeout 230 python3 -m tavcli bench --json > $OUT/bench8.json 2> $OUT/log.txt
B="--fresh-tune-steps 0 --edit-prompts 0 --no-preview --edit-strength 1 --json"
timeout 110 python3 -m tavcli bench --frames 24 $B > $OUT/bench24.json 2>> $OUT/log.txt
timeout 60 python3 -m tavcli bench --low-memory $B > $OUT/bench8-lowmem.json 2>> $OUT/log.txt
timeout 90 python3 -m tavcli bench --low-memory --frames 24 $B > $OUT/bench24-lowmem.json 2>> $OUT/log.txt
for f in bench8 bench24 bench8-lowmem bench24-lowmem; do python3 -c "import json; d = json.load(open('$OUT/$f.json')); d.pop('settings', None); print('$f', d)"; done
timeout 80 python3 benchmarks/profile_step.py --ops --sampling-only --json $OUT/profile.json > $OUT/profile.txt 2>&1
grep -v "aten::" $OUT/profile.txt | head -n 40
