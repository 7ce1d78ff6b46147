#!/usr/bin/env bash
# GPU job: the CUDA-only tests (runtime graph/compiled VAE vs eager, kernel backend vs fake images) and the VAE's
# dynamic-shape compile (Runner's graph mode) against the static one at batch 1 and 4. Device tool,
# carry=["wheels", ".git_sha"]. Writes $OUT/{gpu_tests.log, vae_decode_b1.csv, vae_decode_b4.csv}.
set -uo pipefail
export MIXDQ_GIT_SHA=$(cat "$(dirname "$0")/../../.git_sha" 2>/dev/null)  # the device copy's .git is stale
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
bash scripts/device/bootstrap.sh || exit 1

timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q -x tests/gpu/test_runtime_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
REAL="--config configs/stable-diffusion/sdxl_turbo.yaml --random_weights"
timeout 150 python3 scripts/bench_vae.py $REAL --res 1024 512 --variants eager graph compile-dynamic --repeats 10 \
    --out "$OUT/vae_decode_b1.csv" 2>&1 | tail -7
timeout 180 python3 scripts/bench_vae.py $REAL --res 1024 --batch 4 --variants eager graph compile compile-dynamic \
    --repeats 10 --out "$OUT/vae_decode_b4.csv" 2>&1 | tail -6
