# Device call 1 of performance round 8 (issue #15): round 7's review mends on the GPU (the tests), a
# --low-memory step captured as a CUDA graph (recompute without the RNG state), the sampling calls' profile
# with tav's kernels, the VAE's encode and decode each way, and where a fresh process's imports go.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton TAV_HOME=/tmp/store
SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m compileall -q -j 16 $SITE /tmp/site tavcli
( time python3 -X importtime -c "import tavcli.faces.cli, tavcli.app.jobs, tavcli.method.pipeline, tavcli.method.tuning, tavcli.method.video" ) > $OUT/imports.txt 2>&1
tail -n 3 $OUT/imports.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_triton_temporal.py tests/test_triton_groupnorm.py tests/test_layout.py tests/test_geglu.py > $OUT/gpu-tests.txt 2>&1
tail -n 2 $OUT/gpu-tests.txt; grep -m 20 "^FAILED\|Error" $OUT/gpu-tests.txt
B="--fresh-tune-steps 0 --edit-prompts 0 --no-preview --edit-strength 1 --json"
timeout 70 python3 -m tavcli bench --low-memory $B > $OUT/bench8-lowmem.json 2> $OUT/log.txt
timeout 100 python3 -m tavcli bench --low-memory --frames 24 $B > $OUT/bench24-lowmem.json 2>> $OUT/log.txt
for f in bench8-lowmem bench24-lowmem; do python3 -c "import json; d = json.load(open('$OUT/$f.json')); d.pop('settings', None); print('$f', d)"; done
timeout 80 python3 benchmarks/profile_step.py --ops --sampling-only --json $OUT/profile.json > $OUT/profile.txt 2>&1
grep -v "aten::" $OUT/profile.txt | head -n 40
timeout 110 python3 benchmarks/vae_phases.py --json $OUT/vae.json 2>&1 | tail -n 17
