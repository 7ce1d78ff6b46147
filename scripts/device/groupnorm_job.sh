#!/usr/bin/env bash
# GPU job: GroupNorm, PyTorch's against the split and triton forms (quant_utils/norms.py), compiled: every GroupNorm shape of
# the UNet and the decoder (groupnorm_bench.py), then whole decodes of the FP16 and the int8 decoder (bench_vae.py,
# variants compile / compile-triton-gn / compile-triton-affine-gn / ..., per-kernel profiles). Device tool, carry=["wheels", ".git_sha"].
#   GN_BUCKETS="1024x4 512x1" VAE_KINDS="fp16 int8" VAE_RES=1024 VAE_BATCH=4 bash scripts/device/groupnorm_job.sh
# GN_BUCKETS=none skips the per-shape bench; VAE_VARIANTS picks bench_vae's variants (compile-nchw: Inductor's layout
# optimisation off, the convolutions NCHW).
# Writes $OUT/{groupnorm.csv, vae_decode_gn_<kind>.csv, vae_profile_gn_<kind>.csv (+ _kernels), job.log}: at most 8
# files, what the device tool returns.
# TESTS=1 first runs the GPU test of the triton form (tests/gpu, -k TEST_K), its tail printed and kept in job.log.
source "$(dirname "$0")/job_env.sh"
{
if [ "${TESTS:-0}" = 1 ]; then
  timeout ${TEST_TIMEOUT:-150} python3 -m pytest -q tests/gpu/test_runtime_gpu.py -k "${TEST_K:-triton_group_norm}" \
      -p no:cacheprovider 2>&1 | grep -v Warning | tail -8
fi
[ "${GN_BUCKETS:-}" = none ] || timeout ${GN_TIMEOUT:-240} python3 scripts/device/groupnorm_bench.py --out "$OUT/groupnorm.csv" \
    --buckets ${GN_BUCKETS:-1024x4 512x1} 2>&1 | grep -v Warning
for kind in ${VAE_KINDS:-fp16 int8}; do
  timeout ${VAE_TIMEOUT:-190} python3 scripts/bench_vae.py $REAL --vae $kind --res ${VAE_RES:-1024} \
      --batch ${VAE_BATCH:-4} --repeats 10 --variants ${VAE_VARIANTS:-compile compile-triton-gn compile-triton-affine-gn} --out "$OUT/vae_decode_gn_$kind.csv" \
      --profile_out "$OUT/vae_profile_gn_$kind.csv" 2>&1 | grep -v Warning
done
} > "$OUT/job.log" 2>&1
grep "'total'\|p50_ms\|Error\|error\|passed\|failed" "$OUT/job.log" | tail -30
ls -la "$OUT"
