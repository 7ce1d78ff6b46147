#!/usr/bin/env bash
# GPU job (issue 17): the Ray Serve service with one replica, FP16 and W8A8, driven over HTTP by the load test:
# Poisson at 50% and 80% of capacity and a bursty closed loop (4 clients); the simulator configured like the service
# (fidelity), and the FP16 traces also run in process (--live) for the HTTP + Ray overhead per request. Every HTTP
# run's report splits the client latency (queue, service, encode, replica hand-offs, transport). The service runs with
# --direct_ingress: the replica also answers on its own port (no proxy hop); the in-process comparison and a JPEG
# run go there first (the overhead bar), then both modes through the proxy (what a load-balanced client sees).
# Needs Ray on the machine: first the two `ray_wheels.sh device` calls (see its header), then within 30 s this one:
#   carry ["wheels", ".git_sha"]    command: bash scripts/device/serve_job.sh
# Results: $OUT/serve_results.tgz (one folder per load test: CSVs, .txt report, config, perf models, Prometheus
# scrape) -> untar into results/serve_<gpu>/; $OUT/*.txt are the three reports, $OUT/serve.log the service's log.
# BARE=1 adds Ray Serve's floor without a model after the service stops (~1 min); SERVE_EXTRA: more serve.py flags
# (e.g. --keep_freed_heap, --encode_on cpu).
# Every step has a timeout inside one 10-minute call; what finished is packed even if a later step ran out.
source "$(dirname "$0")/job_env.sh"
T0=$SECONDS
get() { python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())" "$1" 2>/dev/null; }
left() { echo $((${BUDGET_S:-570} - (SECONDS - T0))); }   # seconds left in this call
upto() { local s=$(($(left) - $1)); echo $((s > 30 ? s : 30)); }   # a step's timeout, keeping $1 s for later steps
python3 -c "import ray.serve" 2>/dev/null || {
  echo "error: Ray is not installed on this machine: run the two 'ray_wheels.sh device' calls first (same warm machine)"; exit 1; }
RES=${RES:-1024} N=${N:-100} MAX_BATCH=${MAX_BATCH:-1} PORT=8000 CK=/tmp/serve_ckpt RUNS=/tmp/serve_runs
URL=http://127.0.0.1:$PORT
mkdir -p $RUNS
pack() {
  get http://127.0.0.1:8080/metrics > $RUNS/prometheus_metrics.txt
  tar czf "$OUT/serve_results.tgz" -C $RUNS . && ls -la "$OUT" && tar tzf "$OUT/serve_results.tgz" | head -40
}
# 1. the W8A8 checkpoint (random weights: activation ranges need only be plausible; 4 calibration prompts)
#    (eager: only the checkpoint is wanted here, not a compiled bucket)
MODES=${MODES:-fp16 w8a8}  # MODES=fp16: no checkpoint, one compile less (the overhead runs are FP16)
[[ "$MODES" != *w8a8* ]] || [ -f $CK/w8a8/ckpt.pth ] || timeout 200 python3 scripts/quant_txt2img.py $REAL --fp16 --wbits 8 --calib_num 4 \
    --num_imgs 1 --batch_size 1 --res $RES --exec eager --base_path $CK/w8a8 2>&1 | grep -v "it/s\|Warning\|warn" | tail -4
# 2. the service: one replica (one GPU), FP16 + W8A8 (kernel backend), the default fastest path (blocks and decoder
#    compiled per bucket, CUDA graphs: ~1-2 min per (mode, bucket) cold), calibrated at start-up
python3 scripts/serve.py $REAL --fp16 --modes $MODES --ckpt_base $CK --backend kernel --res $RES \
    --max_batch $MAX_BATCH --port $PORT --calibrate_repeats 8 --direct_ingress ${SERVE_EXTRA:-} > "$OUT/serve.log" 2>&1 &
SERVE=$!
until grep -qs "ready; Ctrl-C stops" "$OUT/serve.log"; do
  if ! kill -0 $SERVE 2>/dev/null || [ "$(left)" -lt 200 ]; then
    echo "error: the service did not start in time"; tail -30 "$OUT/serve.log"; kill -INT $SERVE 2>/dev/null; exit 1
  fi
  sleep 2
done
echo "service ready after $((SECONDS - T0)) s"; get $URL/healthz; echo
DIRECT=$(grep -o "directly (no proxy): http://[0-9.:]*" "$OUT/serve.log" | head -1 | awk '{print $4}')
echo "replica directly at $DIRECT"
LT="--patterns poisson burst --load 0.5 0.8 --conc 4 --num_requests $N --request_timeout_s 60"
# 3. FP16 in process (--live, same traces, same performance model) vs over HTTP straight to the replica: the
#    HTTP + Ray overhead without the proxy, and the simulator's fidelity against it
timeout $(upto 100) python3 scripts/load_test_stub.py --target $DIRECT --live $REAL --fp16 --wbits 16 $LT \
    --out_dir $RUNS/live_vs_direct 2>&1 | grep -v "it/s\|run/s\|Warning\|warn" | tail -30
cp $RUNS/live_vs_direct/mixdq_queue_results.txt "$OUT/live_vs_direct_results.txt" 2>/dev/null
# 3b. the FP16 Poisson-80% trace with JPEG responses, straight to the replica (~20 s)
timeout $(upto 60) python3 scripts/load_test_stub.py --target $DIRECT --wbits 16 --patterns poisson --load 0.8 \
    --num_requests $N --request_timeout_s 60 --format jpeg --out_dir $RUNS/direct_jpeg 2>&1 \
    | grep -v "it/s\|run/s\|Warning\|warn" | tail -20
# 4. through the proxy: FP16 and W8A8, sim vs HTTP (fidelity), accounting per run
timeout $(upto $([ "${BARE:-0}" = 1 ] && echo 100 || echo 25)) python3 scripts/load_test_stub.py --target $URL $LT --out_dir $RUNS/http 2>&1 \
    | grep -v "it/s\|run/s\|Warning\|warn" | tail -30
cp $RUNS/http/mixdq_queue_results.txt "$OUT/http_results.txt" 2>/dev/null
# 5. graceful stop, pack
pack
kill -INT $SERVE; timeout 20 tail --pid=$SERVE -f /dev/null; tail -3 "$OUT/serve.log"
# 6. BARE=1: Ray Serve's own floor on this machine, no model (bare deployment, 1 KB / 500 KB / 3.15 MB bodies)
[ "${BARE:-0}" = 1 ] && timeout $(upto 0) python3 scripts/device/bare_serve_overhead.py \
    --out "$OUT/serve_client_overhead.csv" 2>&1 | grep -v "Warning\|warn" | tail -12
echo "job took $((SECONDS - T0)) s"
