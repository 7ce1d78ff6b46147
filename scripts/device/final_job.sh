#!/usr/bin/env bash
# GPU job: quantized latency grids with the real kernels, live-vs-simulated fidelity, VAE compile.
# Run with the device tool: carry=["wheels", ".git_sha"]; results land in $OUT, then copy them into results/.
set -uo pipefail
bash scripts/device/bootstrap.sh || exit 1
export HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
REAL="--config configs/stable-diffusion/sdxl_turbo.yaml --random_weights"
MODES=${MODES:-"w8a8 w4a8 w6a8"}
# 1. quantized grids (kernel backend, CUDA graphs); calibration on 4 prompts (random weights: ranges only need to be plausible)
for m in $MODES; do
  timeout ${GRID_TIMEOUT:-200} python3 scripts/latency_probe.py $REAL --mode $m --backend kernel --exec graph \
      --res 512 768 1024 --batch ${BATCHES:-1 4 8} --repeats 8 --warmup 2 --calib_num 4 --out "$OUT/latency_$m.csv" 2>&1 \
      | grep -v "it/s\|cell/s\|batch/s" | tail -14
done
# 2. live vs simulated, FP16, Poisson at 50% and 80% of capacity, against a model fitted on this GPU's FP16 grid
python3 scripts/fit_perf_model.py --csv results/latency_fp16.csv --out "$OUT/perf_model_fp16.json" 2>&1 | tail -3
timeout ${LIVE_TIMEOUT:-150} python3 scripts/load_test_stub.py --live $REAL --fp16 --exec graph --wbits 16 --patterns poisson \
    --load 0.5 0.8 --policies static --res 512 --num_requests 120 --perf_model "$OUT/perf_model_fp16.json" \
    --out_dir "$OUT/fidelity" 2>&1 | tail -12
rm -f "$OUT/perf_model_fp16.json" "$OUT/fidelity/mixdq_queue_results.txt" "$OUT/fidelity/mixdq_queue_requests.csv"  # 8 files come back at most
# 3. VAE decode: CUDA graph vs torch.compile at 1024 (VAE_TIMEOUT=0 skips it)
[ "${VAE_TIMEOUT:-150}" != 0 ] && timeout ${VAE_TIMEOUT:-150} python3 scripts/bench_vae.py $REAL --res 1024 --variants eager graph compile --repeats 10 \
    --out "$OUT/vae_decode.csv" 2>&1 | tail -5
ls -la "$OUT" "$OUT/fidelity" 2>/dev/null
