#!/usr/bin/env bash
# One call on the GPU machine for the kernels (issue 4): install the carried wheels, benchmark, check correctness.
# Run through the device tool from the repo root, with carry=["wheels", ".git_sha"]:
#   bash scripts/device/kernels_job.sh                       # everything, results under $OUT
#   BENCH_ARGS="--unet_points 1024x4 --formats W8A8" CHECK=0 bash scripts/device/kernels_job.sh
# Writes $OUT/{kernels_<gpu>.csv, kernels_unet_<gpu>.csv, kernels_tuning_<gpu>.json, kernel_correctness.txt,
# bench.log, check.log, gpu.txt}; copy them into results/ afterwards.
source "$(dirname "$0")/job_env.sh"
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,power.limit \
    --format=csv | tee "$OUT/gpu.txt"
if [ "${BENCH:-1}" = 1 ]; then
    python3 scripts/bench_kernels.py --out_dir "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
fi
if [ "${CHECK:-1}" = 1 ]; then
    tuning=$(ls "$OUT"/kernels_tuning_*.json results/kernels_tuning_*.json 2>/dev/null | head -1)
    python3 tests/gpu/test_kernels_gpu.py --out "$OUT/kernel_correctness.txt" ${tuning:+--tuning_in "$tuning"} \
        ${CHECK_ARGS:-} 2>&1 | tee "$OUT/check.log"
fi
ls -la "$OUT"
