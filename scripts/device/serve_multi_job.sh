#!/usr/bin/env bash
# GPU job (issue 20), on nvidia-h200-x2 or -x4 (ask `status` first: multi-GPU kinds are often withheld): the Ray
# Serve service with N replicas (one GPU each), W8A8 and FP16 at 1024 px, Poisson at 50/80/95% of N x one-replica
# capacity and a bursty (gamma, burstiness 0.25) trace of mixed resolutions (LADDER: 1024 768 512) at 80%; the simulator with
# --replicas N and the matching dispatch (Ray's pow2 ~ jsq, or rr) against the live service.
# Ray first: the two `ray_wheels.sh device` calls on the same kind (see its header). Then one N per call (10 minutes
# each), every call within 30 s of the last so that the checkpoint, Inductor's cache and earlier runs stay in /tmp:
#   carry ["wheels", ".git_sha"]:  NS=1 bash scripts/device/serve_multi_job.sh
#                                  NS=2 bash scripts/device/serve_multi_job.sh
#                                  NS=4 REPORT=1 bash scripts/device/serve_multi_job.sh   (NS=2 REPORT=1 on an x2)
# ROUTER=rr for Ray Serve with round-robin routing (default pow2: Ray's power of two choices); ROUTER=direct: no proxy,
# every replica's own address (serve.py --direct_ingress) given to the load test, which sends to them in turn. Results, all runs so
# far: $OUT/serve_multi.tgz -> results/serve_multi_<gpu>/ (n<N>_<router>/, n<N>_<router>_trace/ load-test folders;
# with REPORT=1 serve_scaleout.csv: goodput, scale-out efficiency, fidelity, and plots/).
source "$(dirname "$0")/job_env.sh"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # NVLink multicast stays off
T0=$SECONDS
get() { python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())" "$1" 2>/dev/null; }
python3 -c "import ray.serve" 2>/dev/null || {
  echo "error: Ray is not installed on this machine: run the two 'ray_wheels.sh device' calls first (same warm machine)"; exit 1; }
NS=${NS:-1} ROUTER=${ROUTER:-pow2} MAX_BATCH=${MAX_BATCH:-1} N_PER_GPU=${N_PER_GPU:-100} PORT=8000
RES=${RES:-1024} LADDER=${LADDER:-1024 768 512}
CK=/tmp/serve_ckpt RUNS=/tmp/serve_multi URL=http://127.0.0.1:8000
GPUS=$(nvidia-smi -L | wc -l)
mkdir -p $RUNS
echo "$GPUS GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | xargs)"
# 1. the W8A8 checkpoint (once per machine)
[ -f $CK/w8a8/ckpt.pth ] || timeout 200 python3 scripts/quant_txt2img.py $REAL --fp16 --wbits 8 --calib_num 4 \
    --num_imgs 1 --batch_size 1 --res $RES --base_path $CK/w8a8 2>&1 | grep -v "it/s\|Warning\|warn" | tail -3
for N in $NS; do
  [ "$N" -le "$GPUS" ] || { echo "skip N=$N: $GPUS GPU(s) here"; continue; }
  run=n${N}_${ROUTER}
  # 2. the service: N replicas, each FP16 + W8A8 (kernel backend), every bucket warmed and calibrated
  [ "$ROUTER" = direct ] && ROUTING="--direct_ingress" || ROUTING="--router $ROUTER"
  python3 scripts/serve.py $REAL --fp16 --modes w8a8 fp16 --ckpt_base $CK --backend kernel --res $RES \
      --ladder $LADDER --replicas $N --max_batch $MAX_BATCH $ROUTING --port $PORT \
      --calibrate_repeats 8 > $RUNS/serve_$run.log 2>&1 &
  SERVE=$! T_N=$SECONDS
  until grep -qs "ready; Ctrl-C stops" $RUNS/serve_$run.log; do
    kill -0 $SERVE 2>/dev/null && [ $((SECONDS - T_N)) -lt 360 ] || {
      echo "error: the $N-replica service did not start"; tail -20 $RUNS/serve_$run.log; kill -INT $SERVE; exit 1; }
    sleep 2
  done
  echo "N=$N ready after $((SECONDS - T_N)) s"
  TARGETS=$URL  # the proxy, or (ROUTER=direct) every replica's own address
  [ "$ROUTER" = direct ] && TARGETS=$(grep -o "directly (no proxy): http://[0-9.:]*" $RUNS/serve_$run.log | awk '{print $4}' | xargs)
  # 3. Poisson at 50/80/95% of N x capacity, both modes (rates and the simulator come from the service's /config)
  timeout 300 python3 scripts/load_test_stub.py --target $TARGETS --patterns poisson --load 0.5 0.8 0.95 \
      --num_requests $((N * N_PER_GPU)) --request_timeout_s 60 --out_dir $RUNS/$run 2>&1 \
      | grep -v "it/s\|run/s\|Warning\|warn" | tail -14
  # 4. a bursty trace of mixed resolutions at 80% of N x the mix's capacity (W8A8)
  python3 - "$URL" "$RUNS/trace_$run.csv" $((N * N_PER_GPU)) <<'PY'
import json, sys, tempfile
import numpy as np
from quant_utils.perf_model import PerfModel
from quant_utils.serving import client, workloads as wl
url, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
info = client.server_info(url)
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump(info["perf_model"], f)
pm, s = PerfModel.load(f.name), info["serve"]
cap = 1 / np.mean([1 / pm.capacity("w8a8", r, s["max_batch"]) for r in s["ladder"]])  # one replica, an even mix
w = wl.gamma(n, 0.8 * s["replicas"] * cap, 0.25, seed=0)
wl.write_trace(w.arrival_s, path, res=np.random.default_rng(0).choice(s["ladder"], n), meta={"rate_rps": w.rate})
print(f"trace: {n} requests at {w.rate:.1f} req/s, burstiness 0.25, res {s['ladder']}")
PY
  timeout 200 python3 scripts/load_test_stub.py --target $TARGETS --patterns trace --trace $RUNS/trace_$run.csv --wbits 8 \
      --request_timeout_s 60 --out_dir $RUNS/${run}_trace 2>&1 | grep -v "it/s\|run/s\|Warning\|warn" | tail -8
  get http://127.0.0.1:8080/metrics > $RUNS/prometheus_$run.txt
  kill -INT $SERVE; timeout 30 tail --pid=$SERVE -f /dev/null
done
# 5. the scale-out table and plots over every N run so far
if [ "${REPORT:-0}" = 1 ]; then
  python3 scripts/serve_scaleout.py --runs $(for d in $RUNS/n*_${ROUTER}; do n=${d##*/n}; echo "${n%%_*}=$d"; done) \
      --out_dir $RUNS 2>&1 | tail -20
fi
tar czf "$OUT/serve_multi.tgz" -C $RUNS . && ls -la "$OUT"
echo "job took $((SECONDS - T0)) s"
