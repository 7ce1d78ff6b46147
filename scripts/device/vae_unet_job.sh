#!/usr/bin/env bash
# GPU job: VAE decode variants (issue 8) and UNet steps of FP16 and the kernel backend (issue 4) under CUDA graphs
# and/or with compiled blocks (UNET_EXEC=graph,compile), committed tile configs. Device tool, carry=["wheels",
# ".git_sha"]. Writes $OUT/{vae_decode.csv, vae_profile.csv, kernels_unet_*.csv, kernels_profile_*.csv, *.log}.
#   VAE=0 UNET_EXEC=graph,compile FORMATS=W8A8,W4A8 UNET_POINTS=1024x4,512x1 UNET_TIMEOUT=570 bash scripts/device/vae_unet_job.sh
# PROFILE: the points also profiled (default: every point; "" none); REGIONS: bench_kernels --compile_regions (default auto: as the serving Runner); BUDGET: no new UNet point after
# that many seconds (what ran is written)
#   UNET=0 VAE_RES=1024 VAE_BATCH=4 VAE_VARIANTS="compile compile-channels-last" bash scripts/device/vae_unet_job.sh
source "$(dirname "$0")/job_env.sh"
TUNING=${TUNING:-}  # a tile-config file to add on top of the committed ones (default: the committed ones only)
if [ "${VAE:-1}" = 1 ]; then
  timeout ${VAE_TIMEOUT:-300} python3 scripts/bench_vae.py $REAL --res ${VAE_RES:-1024 512 768} --repeats 10 \
      --batch ${VAE_BATCH:-1} ${VAE_VARIANTS:+--variants $VAE_VARIANTS} \
      --out "$OUT/vae_decode.csv" --profile_out "$OUT/vae_profile.csv" 2>&1 | grep -v Warning | tee "$OUT/vae.log" | tail -25
fi
if [ "${UNET:-1}" = 1 ]; then
  timeout ${UNET_TIMEOUT:-240} python3 scripts/bench_kernels.py --out_dir "$OUT" --gemm_points "" \
      --unet_points ${UNET_POINTS:-1024x4,512x1} --profile_points "${PROFILE-${UNET_POINTS:-1024x4,512x1}}" \
      --formats ${FORMATS:-W8A8} --unet_exec ${UNET_EXEC:-graph} ${TUNING:+--tuning_in $TUNING} \
      ${REGIONS:+--compile_regions $REGIONS} ${BUDGET:+--time_budget_s $BUDGET} 2>&1 | tee "$OUT/unet.log" | tail -15
fi
ls -la "$OUT"
