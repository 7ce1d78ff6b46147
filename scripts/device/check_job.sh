#!/usr/bin/env bash
# GPU job: the CUDA-only tests (runtime graph/compiled VAE vs eager, kernel backend vs fake images) and the VAE's
# dynamic-shape compile (Runner's graph mode) against the static one at batch 1 and 4. Device tool,
# carry=["wheels", ".git_sha"]. Writes $OUT/{gpu_tests.log, vae_decode_b1.csv, vae_decode_b4.csv}.
source "$(dirname "$0")/job_env.sh"

timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q -x tests/gpu/test_runtime_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
timeout 150 python3 scripts/bench_vae.py $REAL --res 1024 512 --variants eager graph compile-dynamic --repeats 10 \
    --out "$OUT/vae_decode_b1.csv" 2>&1 | tail -7
timeout 180 python3 scripts/bench_vae.py $REAL --res 1024 --batch 4 --variants eager graph compile compile-dynamic \
    --repeats 10 --out "$OUT/vae_decode_b4.csv" 2>&1 | tail -6
