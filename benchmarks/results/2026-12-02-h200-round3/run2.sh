# Device call 2 of performance round 3 (issue #15): the round's tree in .perf/after, wheels in .whl.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
cd .perf/after
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton
L=$OUT/log.txt; t0=$(date +%s); el() { echo "== $1 at $(( $(date +%s) - t0 ))s" | tee -a $L; }
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"; git log -1 --format=%h 2>/dev/null; } > $OUT/machine.txt
timeout 90 python3 benchmarks/check_groupnorm.py --json $OUT/groupnorm.json >> $L 2>&1; el groupnorm
timeout 90 python3 -m pytest -q -x -p no:cacheprovider tests/test_gpu.py >> $L 2>&1; tail -1 $L; el tests
timeout 200 python3 -m tavcli bench --json > $OUT/bench8.json 2>> $L; el bench8
timeout 100 python3 -m tavcli bench --json --frames 24 --steps 15 --fresh-tune-steps 0 --edit-prompts 0 > $OUT/bench24.json 2>> $L; el bench24
timeout 90 python3 -m tavcli bench --json --low-memory --steps 15 --fresh-tune-steps 0 --edit-prompts 0 > $OUT/lowmem.json 2>> $L; el lowmem
left=$(( 545 - $(date +%s) + t0 )); [ $left -gt 40 ] && timeout $left python3 benchmarks/profile_step.py --json $OUT/profile.json > /dev/null 2>> $L; el profile
python3 - <<'PY'
import json, os
o = os.environ["OUT"]
for n in ("bench8", "bench24", "lowmem"):
    try:
        d = json.load(open(f"{o}/{n}.json"))
    except Exception as e:
        print(n, "failed", e); continue
    print(n, {k: d.get(k) for k in ("tune_ms_per_step", "tune_peak_gib", "tune_first_steps_s", "inversion_s", "inversion_first_step_s", "inversion_ms_per_step", "edit_cold_s", "edit_warm_s", "edit_peak_gib", "edit_prompts_s", "edit_prompts_peak_gib", "fresh_tune_s", "fresh_edit_s", "load_s")})
try:
    print(json.load(open(f"{o}/groupnorm.json")))
except Exception as e:
    print("groupnorm failed", e)
PY
