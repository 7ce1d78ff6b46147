#!/usr/bin/env bash
# GPU job (issue 18): quantized model folders of the full-size UNet (random weights). File bytes of W8A8, W4A8,
# MixDQ weight_4.00 and weight_3.66 against the FP16 safetensors UNet; load to first 512 px image in cold processes
# (FP16 folder, quantized folder, FP16-then-quantize = today's path) with the kernel backend, eager; GPU memory.
# Then the GPU tests of the format (images after save -> load bit-identical, kernel and fake backends).
# About 3-4 min of GPU time; writes ~12 GB under $WORK (removed at the end; the machine has ~64 GB of disk).
# Device tool, carry=["wheels", ".git_sha"]. Writes $OUT/quantized_size_<gpu>.csv (copy into results/), ship.log,
# gpu_tests_quantized_io.log, and kernels_tuning_<gpu>.json (only if a shape needed tuning): the tile configs this
# run tuned beyond the committed files, from the tuning cache (merge its configs into results/kernels_tuning_<gpu>.json
# so later processes on this GPU model skip the tuning).
#   REPEATS=2 FORMATS="W4A8 weight_3.66" TODAY=W4A8 bash scripts/device/ship_job.sh   # fewer formats, more runs
source "$(dirname "$0")/job_env.sh"
WORK=${WORK:-/tmp/qio}
export MIXDQ_TUNING_CACHE=$WORK/tuning_cache.json
timeout ${BENCH_TIMEOUT:-400} python3 scripts/bench_quantized_io.py $REAL --exec eager --res 512 \
    --formats ${FORMATS:-W8A8 W4A8 weight_4.00 weight_3.66} --today ${TODAY:-W4A8} --repeats ${REPEATS:-1} --work_dir "$WORK/work" \
    --out_dir "$OUT" 2>&1 | grep -v "it/s\|batch/s\|Warning\|warn" | tee "$OUT/ship.log" | tail -25
tag=$(ls "$OUT"/quantized_size_*.csv 2>/dev/null | head -1 | sed 's/.*quantized_size_\(.*\)\.csv/\1/')
[ -f "$MIXDQ_TUNING_CACHE" ] && cp "$MIXDQ_TUNING_CACHE" "$OUT/kernels_tuning_${tag:-gpu}.json"
rm -rf "$WORK"
timeout ${TEST_TIMEOUT:-150} python3 -m pytest -q -x tests/gpu/test_quantized_io_gpu.py 2>&1 \
    | tee "$OUT/gpu_tests_quantized_io.log" | tail -5
ls -la "$OUT"
