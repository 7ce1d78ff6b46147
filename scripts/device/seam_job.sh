#!/usr/bin/env bash
# GPU check of the kernel-contract refactor (issue 19): the CUDA-only tests (QuantLayer owns its KernelState, the
# Runner installs the Tuning, quantized folders fill the state, the self-check harness from tests/gpu/) and one small
# bench_kernels run through its named steps (per-shape table, fp16_convs auto, UNet step, tuning file).
# Device tool, carry=["wheels", ".git_sha"]:
#   bash scripts/device/seam_job.sh                         # both, results under $OUT
#   TESTS="tests/gpu/test_runtime_gpu.py" BENCH=0 bash scripts/device/seam_job.sh
# Writes $OUT/{gpu_tests.log, bench.log, kernels_<gpu>.csv, kernels_unet_<gpu>.csv, kernels_tuning_<gpu>.json}.
source "$(dirname "$0")/job_env.sh"
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache}
timeout ${TEST_TIMEOUT:-360} python3 -m pytest -q ${TESTS:-tests/gpu} 2>&1 | tee "$OUT/gpu_tests.log" | tail -20
if [ "${BENCH:-1}" = 1 ]; then
    timeout ${BENCH_TIMEOUT:-200} python3 scripts/bench_kernels.py --out_dir "$OUT" --gemm_points 512x1 \
        --unet_points 512x1 --profile_points "" --formats W8A8 --fp16_convs auto --time_budget_s 150 2>&1 \
        | tee "$OUT/bench.log" | tail -15
fi
ls -la "$OUT"
