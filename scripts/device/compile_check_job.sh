#!/usr/bin/env bash
# GPU job: the CUDA-only runtime tests (graph and compiled execution, FP16 and the kernel backend, vs eager/fake),
# then the compiled W8A8 UNet at 512x1 with Inductor emulating eager's fp16 rounding between fused ops
# (TORCHINDUCTOR_EMULATE_PRECISION_CASTS=1): does the compiled path then compute what the eager kernel path does?
# Device tool, carry=["wheels", ".git_sha"]. Writes $OUT/{gpu_tests.log, epc.log, epc/kernels_unet_*.csv}.
source "$(dirname "$0")/job_env.sh"
timeout ${TEST_TIMEOUT:-260} python3 -m pytest -q -x tests/gpu/test_runtime_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
TORCHINDUCTOR_EMULATE_PRECISION_CASTS=1 timeout ${UNET_TIMEOUT:-280} python3 scripts/bench_kernels.py \
    --out_dir "$OUT/epc" --gemm_points "" --unet_points ${UNET_POINTS:-512x1} --profile_points "" --formats W8A8 \
    --unet_exec graph,compile --tuning_in results/kernels_tuning_nvidia_h100_80gb_hbm3.json 2>&1 \
    | tee "$OUT/epc.log" | grep "^{\|^\[bench\]\|FAILED" | cut -c1-300
rm -f "$OUT"/epc/kernels_tuning_*.json "$OUT"/epc/kernels_nvidia_*.csv
