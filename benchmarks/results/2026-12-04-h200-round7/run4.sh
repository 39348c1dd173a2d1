# Device call 4 of performance round 7 (issue #15): the final tree (the first frames' keys attended once,
# copied out and projected per part so backward keeps no joined copy): the GPU tests, `tav bench` at its
# defaults, at 24 frames and with --low-memory, and the profile of a step and of the sampling calls.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton TAV_HOME=/tmp/store
SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m compileall -q -j 16 $SITE /tmp/site tavcli
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_triton_temporal.py > $OUT/gpu-tests.txt 2>&1
tail -n 2 $OUT/gpu-tests.txt; grep -m 20 "^FAILED\|Error" $OUT/gpu-tests.txt
B="--fresh-tune-steps 0 --edit-prompts 0 --no-preview --edit-strength 1 --json"
timeout 200 python3 -m tavcli bench --json > $OUT/bench8.json 2> $OUT/log.txt
timeout 110 python3 -m tavcli bench --frames 24 $B > $OUT/bench24.json 2>> $OUT/log.txt
timeout 60 python3 -m tavcli bench --low-memory $B > $OUT/bench8-lowmem.json 2>> $OUT/log.txt
for f in bench8 bench24 bench8-lowmem; do python3 -c "import json; d = json.load(open('$OUT/$f.json')); d.pop('settings', None); print('$f', d)"; done
timeout 90 python3 benchmarks/profile_step.py --ops --json $OUT/profile.json > $OUT/profile.txt 2>&1
head -n 12 $OUT/profile.txt; grep -A 10 "== inversion_call\|== cfg_call" $OUT/profile.txt | grep -v "aten::" | head -24
