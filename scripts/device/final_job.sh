#!/usr/bin/env bash
# GPU job: latency grids (EXEC=graph: CUDA graphs + compiled VAE, the older path; EXEC=compile: the serving path,
# compiled blocks + compiled VAE + CUDA graphs, issue 14's new path), optionally live-vs-simulated fidelity.
# Run with the device tool, carry=["wheels", ".git_sha"]; results land in $OUT, then copy them into results/.
#   MODES="fp16 w8a8" bash scripts/device/final_job.sh        # two modes fit one 10-minute call
#   MODES="" LIVE=1 bash scripts/device/final_job.sh          # only the live-vs-simulated FP16 check
#   EXEC=compile MODES=fp16 RES="512 1024" BATCHES="1 4" bash scripts/device/final_job.sh   # a shard of the new grid
# Modes run one after another on the same machine: the first pays the VAE's torch.compile, later ones hit
# Inductor's on-disk cache. Each grid's CSV is rewritten after every cell (a timeout keeps what was measured).
source "$(dirname "$0")/job_env.sh"
TAG=$([ "${EXEC:-graph}" = graph ] && echo latency || echo "latency_${EXEC}")  # latency_<mode>.csv: the older path
# 1. grids; quantized modes use the kernel backend (tile configs from results/kernels_tuning_<gpu>.json),
#    calibrated on 4 prompts (random weights: activation ranges only need to be plausible)
for m in ${MODES-fp16 w8a8 w4a8 w6a8}; do
  backend=$([ "$m" = fp16 ] || echo "--backend kernel --calib_num 4")
  timeout ${GRID_TIMEOUT:-270} python3 scripts/latency_probe.py $REAL --mode $m $backend --exec ${EXEC:-graph} \
      --res ${RES:-512 768 1024} --batch ${BATCHES:-1 2 4 8} --repeats 8 --warmup 2 --out "$OUT/${TAG}_$m.csv" 2>&1 \
      | grep -v "it/s\|cell/s\|batch/s\|Warning\|warn" | tail -16
done
# 2. live vs simulated, FP16, Poisson at 50% and 80% of capacity, against a model fitted on this run's FP16 grid
if [ "${LIVE:-0}" = 1 ]; then
  grid=$([ -f "$OUT/${TAG}_fp16.csv" ] && echo "$OUT/${TAG}_fp16.csv" || echo results/latency_fp16.csv)
  python3 scripts/fit_perf_model.py --csv "$grid" --out /tmp/perf_model_fp16.json 2>&1 | tail -3
  timeout ${LIVE_TIMEOUT:-150} python3 scripts/load_test_stub.py --live $REAL --fp16 --exec graph --wbits 16 \
      --patterns poisson --load 0.5 0.8 --policies static --res 512 --num_requests 120 \
      --perf_model /tmp/perf_model_fp16.json --out_dir "$OUT/fidelity" 2>&1 | tail -12
  rm -f "$OUT/fidelity/mixdq_queue_results.txt" "$OUT/fidelity/mixdq_queue_requests.csv"  # 8 files come back at most
fi
ls -la "$OUT" "$OUT/fidelity" 2>/dev/null
