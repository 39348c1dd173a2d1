# Device call 3 of performance round 6 (issue #15): the tree with tav's quick exit, bytecode compiled once
# (as pip leaves an install): `tav bench` at its defaults, the fresh-process timelines, and a cProfile of a
# fresh 20-step `tav tune` to split its first-step seconds.
R=benchmarks/results/2026-12-04-h200-round6
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton TAV_HOME=/tmp/store
SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m compileall -q -j 16 $SITE /tmp/site tavcli
timeout 300 python3 -m tavcli bench --json > $OUT/bench8.json 2> $OUT/log.txt
python3 -c "from pathlib import Path; from tavcli.app import builtin; builtin.synthetic_clip(Path('/tmp/clip.mp4'), 8, 512)"
T=$OUT/timelines.txt
for i in 1 2; do
  timeout 90 python3 benchmarks/stamp.py python3 -m tavcli tune /tmp/clip.mp4 "a man is skiing" --base random:sd-v1 --frames 8 --size 512 --steps 300 > /tmp/tl.txt 2>&1
  cat /tmp/tl.txt >> $T; ID=$(grep -o 'stored [0-9a-f]*' /tmp/tl.txt | cut -d' ' -f2)
  timeout 60 python3 benchmarks/stamp.py python3 -m tavcli edit $ID "a panda is skiing" --out-dir /tmp/edits >> $T 2>&1
done
timeout 60 python3 -m cProfile -o /tmp/tune.prof -m tavcli tune /tmp/clip.mp4 "a man is skiing" --base random:sd-v1 --frames 8 --size 512 --steps 20 --quiet >> $OUT/log.txt 2>&1
python3 $R/profile_stats.py /tmp/tune.prof > $OUT/tune-profile.txt 2>&1
cat $T; tail -n 4 $OUT/log.txt
python3 -c "import json; d = json.load(open('$OUT/bench8.json')); d.pop('settings', None); print(d)"
