# Sourced by every GPU job (scripts/device/*_job.sh): repo root, offline env, output folder, the commit stamp,
# and the carried wheels installed (bootstrap.sh). The device tool's copy of the repo carries a stale .git, so
# results name the commit from .git_sha (write it before the call: git rev-parse --short HEAD > .git_sha).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export MIXDQ_GIT_SHA=$(cat .git_sha 2>/dev/null)
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
REAL="--config configs/stable-diffusion/sdxl_turbo.yaml --random_weights"
bash scripts/device/bootstrap.sh || exit 1
