# Device call 1 of performance round 7 (issue #15): the GPU tests on this tree (round 6's last two
# refactors, the GroupNorm kernels' shared stats load, the held temporal kernels), then the sweep of
# temporal-attention plans and of sparse-causal attention with the first frames' keys attended once.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache TRITON_CACHE_DIR=/tmp/triton TAV_HOME=/tmp/store
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/machine.txt
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_triton_groupnorm.py tests/test_triton_temporal.py tests/test_layout.py tests/test_geglu.py > $OUT/gpu-tests.txt 2>&1
tail -n 15 $OUT/gpu-tests.txt
timeout 330 python3 benchmarks/kernel_sweep.py --json $OUT/sweep.json > $OUT/sweep-log.txt 2>&1
tail -n 80 $OUT/sweep-log.txt
