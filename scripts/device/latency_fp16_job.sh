#!/usr/bin/env bash
# GPU job: FP16 latency grid (graph + eager batch 1) and VAE decode variants on the full-size random-weight model.
# Usage (device tool): bash scripts/device/latency_fp16_job.sh   (writes under $OUT)
set -uo pipefail
bash scripts/device/bootstrap.sh || exit 1
export HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
REAL="--config configs/stable-diffusion/sdxl_turbo.yaml --random_weights"
python3 scripts/latency_probe.py $REAL --mode fp16 --exec graph --res 512 768 1024 --batch 1 2 4 8 --repeats 20 \
    --out "$OUT/latency_fp16.csv" 2>&1 | grep -v it/s | tail -20
python3 scripts/latency_probe.py $REAL --mode fp16 --exec eager --res 512 768 1024 --batch 1 --repeats 10 \
    --out "$OUT/latency_fp16_eager.csv" 2>&1 | tail -6
python3 scripts/bench_vae.py $REAL --res 512 1024 --repeats 10 --out "$OUT/vae_decode.csv" 2>&1 | tail -12
