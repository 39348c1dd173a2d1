# Device call 1 of performance round 3 (issue #15): run from the repo root of the device's copy,
# with the round's tree in .perf/after, main at 970f489 in .perf/before and the wheels in .whl.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
  python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"; } > $OUT/machine.txt
cd .perf/after
t0=$(date +%s)
timeout 100 python3 benchmarks/check_groupnorm.py --json $OUT/groupnorm.json 2>&1 | tail -4
echo "groupnorm done $(( $(date +%s) - t0 ))s"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_triton_groupnorm.py tests/test_gpu.py tests/test_attention.py tests/test_geglu.py > $OUT/gpu_tests.txt 2>&1; tail -3 $OUT/gpu_tests.txt
echo "tests done $(( $(date +%s) - t0 ))s"
(cd ../before && timeout 120 python3 -m tavcli bench --json > $OUT/before.json 2> $OUT/before.err); tail -c 300 $OUT/before.err
echo "before done $(( $(date +%s) - t0 ))s"
timeout 200 python3 -m tavcli bench --json > $OUT/after.json 2> $OUT/after.err; tail -c 300 $OUT/after.err
echo "after done $(( $(date +%s) - t0 ))s"
for b in default flash; do timeout 60 python3 benchmarks/check_sdpa.py $b 2>/dev/null | tail -1 >> $OUT/sdpa.jsonl; done
echo "sdpa done $(( $(date +%s) - t0 ))s"
python3 - <<'PY'
import json, os
o = os.environ["OUT"]
for n in ("before", "after"):
    try:
        d = json.load(open(f"{o}/{n}.json"))
    except Exception as e:
        print(n, "failed", e); continue
    print(n, {k: d.get(k) for k in ("tune_ms_per_step", "tune_peak_gib", "inversion_s", "inversion_first_step_s", "inversion_ms_per_step", "edit_cold_s", "edit_warm_s", "edit_peak_gib", "edit_prompts_s", "fresh_tune_s", "fresh_edit_s", "load_s")})
print(open(f"{o}/sdpa.jsonl").read())
PY
