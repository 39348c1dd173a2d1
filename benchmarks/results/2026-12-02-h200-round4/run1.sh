# Device call 1 of performance round 4 (issue #15): GPU tests, the attention microbenchmark, the op-level
# profile and `tav bench` on the working tree; `tav bench` (in-process figures only) on 21d19a7, the tree
# before this round, unpacked in .perf/before; each in a fresh process, in this order.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/machine.txt
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.backends.cudnn.version())" >> $OUT/machine.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_triton_temporal.py tests/test_triton_groupnorm.py tests/test_gpu.py tests/test_attention.py > $OUT/gpu-tests.txt 2>&1; tail -3 $OUT/gpu-tests.txt
timeout 90 python3 benchmarks/attention_kinds.py --json $OUT/kinds.json > /dev/null 2> $OUT/log.txt
timeout 120 python3 benchmarks/profile_step.py --ops --json $OUT/profile.json > $OUT/profile.txt 2>> $OUT/log.txt
timeout 240 python3 -m tavcli bench --json > $OUT/bench8-after.json 2>> $OUT/log.txt
(cd .perf/before && PYTHONPATH=/tmp/site:$PWD timeout 120 python3 -m tavcli bench --json --fresh-tune-steps 0 --edit-prompts 0 > $OUT/bench8-before.json 2>> $OUT/log.txt)
for f in after before; do python3 -c "import json; d = json.load(open('$OUT/bench8-$f.json')); d.pop('settings', None); print('$f', d)"; done
