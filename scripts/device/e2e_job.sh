#!/usr/bin/env bash
# GPU job (issue 14): the whole image through the serving Runner, every mode in its fastest execution, in one process
# (scripts/bench_e2e.py), plus optionally the GPU tests first. Device tool, carry=["wheels", ".git_sha"]; results in $OUT.
# With CELLS (a few cells) the variants are timed interleaved (bench_e2e --interleave: every variant alive at once).
# A session runs it in parts on one warm machine (Inductor's on-disk cache and the tuned tile configs persist in /tmp
# between the calls, so later parts pay no compile for what an earlier part compiled):
#   TESTS=1 MODES="fp16" FP16_EXEC="graph compile" TAG=e2e_a bash scripts/device/e2e_job.sh
#   MODES="fp16 w8a8" FP16_EXEC="compile" PROFILE="1024x4 512x1" TAG=e2e_b bash scripts/device/e2e_job.sh
#   MODES="fp16 w6a8 w4a8 mixdq" FP16_EXEC="compile" VAES=fp16 TAG=e2e_c bash scripts/device/e2e_job.sh
# TILES_COMPARE=fixup first times those opt-in tile configs against the tuned ones (tiles_vs_tuned.py);
# TILES=1 in a later part swaps in the winners (TILES=<file>: that tuning file); E2E=0 skips bench_e2e. QUANT_EXEC: the quantized UNets' executions (e.g. "compile compile-fused"). EXTRA: more bench_e2e flags. E2E_TIMEOUT: keep it <= 540 in a 600 s call.
source "$(dirname "$0")/job_env.sh"
TAG=${TAG:-e2e}
TUNING=/tmp/mixdq_tuning_$(python3 -c 'import re,torch;print(re.sub("[^a-z0-9]+","_",torch.cuda.get_device_name(0).lower()))').json
export MIXDQ_TUNING_FILE=$TUNING  # tile configs tuned by an earlier part on this machine
if [ ! -f "$TUNING" ]; then  # first part: start from the committed tuned configs of this chip family (Tuning.standard:
  # other GPU models' files first, this one's last); new shapes tune here
  MIXDQ_TUNING_FILE= MIXDQ_TUNING_CACHE=none python3 -c "import sys; sys.path.insert(0, '.'); from quant_utils.kernels.tuning import Tuning; \
Tuning.standard('results', committed=True).save(sys.argv[1])" "$TUNING"
fi
TESTS_OK=1
if [ "${TESTS:-0}" = 1 ]; then  # first: a faulty kernel must not reach the timing runs below
  timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q -x tests/gpu/test_runtime_gpu.py tests/gpu/test_kernels_gpu.py \
      -k "${TEST_K:-runtime or decoder or dynamic or whole_unet}" -p no:cacheprovider 2>&1 | grep -v Warning \
      | tee "$OUT/gpu_tests_$TAG.log" | tail -12 || TESTS_OK=0
fi
if [ -n "${TILES_COMPARE:-}" ]; then  # kernels v5: opt-in tile configs against the tuned ones, per UNet linear
  # shape; TILES=1 in a later part of this session swaps the winners (equal outputs, >= 3% faster) into the tile configs
  [ $TESTS_OK = 1 ] || echo "GPU tests failed or timed out: the $TILES_COMPARE tile configs are not timed"
  STEM="$OUT/${TILES_COMPARE// /_}_vs_tuned"
  [ $TESTS_OK = 1 ] && MIXDQ_TUNING_CACHE=none timeout ${TILES_TIMEOUT:-240} python3 scripts/device/tiles_vs_tuned.py --tiles $TILES_COMPARE \
      --out "$STEM" 2>&1 | grep -v Warning | tail -40 && cp "$STEM.json" /tmp/tiles_vs_tuned.json
fi
TILES_JSON=/tmp/tiles_vs_tuned.json; [ -f "${TILES:-}" ] && TILES_JSON=$TILES  # TILES=<file>: a carried tuning
if [ "${TILES:-0}" != 0 ] && [ -f $TILES_JSON ]; then cp $TILES_JSON "$TUNING"; echo "tile configs: $TILES_JSON"; fi
# the compile cache this job reads and fills (the scripts' default is ~/.cache/mixdq/inductor); warm = it holds
# compiled code from an earlier job on this machine (an empty or absent folder, as on a fresh machine: cold)
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$HOME/.cache/mixdq/inductor}
STATE=$([ -n "$(find "$TORCHINDUCTOR_CACHE_DIR" -type f -print -quit 2>/dev/null)" ] && echo "warm (earlier job on this machine)" || echo cold)
# COMPILE_CACHE=1: torch's mega-cache of what this job compiles, back in $OUT in <= 15 MiB parts (the device tool
# returns 16 MiB per file); a later call on a fresh machine carries them as `.compile_cache` (ignored by git) and
# starts warm: the parts are joined and loaded before the first compile (bench_e2e --compile_cache)
CACHE=/tmp/compile_cache.bin
if [ -d .compile_cache ]; then cat .compile_cache/compile_cache.bin.part* > $CACHE && ls -la $CACHE; fi
[ "${COMPILE_CACHE:-0}" = 1 ] || [ -f $CACHE ] && EXTRA="--compile_cache $CACHE ${EXTRA:-}"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader
if [ "${E2E:-1}" = 1 ]; then  # E2E=0: only the tests / tile comparison above
  timeout ${E2E_TIMEOUT:-480} python3 scripts/bench_e2e.py $REAL --modes ${MODES:-fp16 w8a8} --fp16_exec ${FP16_EXEC:-compile} ${QUANT_EXEC:+--quant_exec $QUANT_EXEC} \
      --vae_kinds ${VAES:-fp16 int8 tiny} --vae_modes ${VAE_MODES:-fp16 w8a8} --res ${RES:-512 768 1024} \
      --batch ${BATCHES:-1 2 4 8} ${CELLS:+--cells $CELLS} --compile_shapes ${SHAPES:-static} --vae_exec ${VAE_EXEC:-static} --repeats ${REPEATS:-6} --profile_points ${PROFILE:-} \
      ${VAE_ERRORS:+--vae_errors_out "$OUT/vae_int8_errors.csv"} --tuning_out "$TUNING" --cache_state "$STATE" ${CELLS:+--interleave} ${EXTRA:-} \
      --out "$OUT/$TAG.csv" 2>&1 | grep -v "Warning\|warn(\|it/s]\|cell/s]\|s/cell]" | tee "$OUT/$TAG.log" | tail -45
fi
cp "$TUNING" "$OUT/tuning_$TAG.json" 2>/dev/null
if [ "${COMPILE_CACHE:-0}" = 1 ] && [ -f $CACHE ]; then  # the device tool returns 8 files per call
  room=$((8 - $(ls "$OUT" | wc -l))); ls -la $CACHE; split -b 15M -d $CACHE "$OUT/compile_cache.bin.part"
  n=$(ls "$OUT"/compile_cache.bin.part* | wc -l)
  [ "$n" -le "$room" ] || { echo "compile cache: $n parts of 15 MiB, room for $room; dropped"; rm "$OUT"/compile_cache.bin.part*; }
fi
ls -la "$OUT"
