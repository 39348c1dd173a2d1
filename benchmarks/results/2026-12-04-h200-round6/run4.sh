# Device call 4 of performance round 6 (issue #15): the GPU tests on this tree (the feed-forward keeping only
# its input where its weights are frozen), then `tav bench` at its defaults and at 24 frames, bytecode
# compiled once as pip leaves an install; tav's quick exit and its one reading of the installed packages.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton TAV_HOME=/tmp/store
SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m compileall -q -j 16 $SITE /tmp/site tavcli
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_geglu.py tests/test_gpu.py > $OUT/gpu-tests.txt 2>&1
tail -n 3 $OUT/gpu-tests.txt
timeout 200 python3 -m tavcli bench --json > $OUT/bench8.json 2> $OUT/log.txt
timeout 120 python3 -m tavcli bench --frames 24 --fresh-tune-steps 0 --edit-prompts 0 --no-preview --edit-strength 1 --json > $OUT/bench24.json 2>> $OUT/log.txt
tail -n 3 $OUT/log.txt
for f in bench8 bench24; do python3 -c "import json; d = json.load(open('$OUT/$f.json')); d.pop('settings', None); print('$f', d)"; done
