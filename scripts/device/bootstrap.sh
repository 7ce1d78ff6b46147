#!/usr/bin/env bash
# On a GPU machine with no network (the lent H100/H200): install the carried wheels
# (`make wheels` downloads them into wheels/) into its own Python, then print the stack.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-deps --no-index wheels/*.whl 2>&1 | grep -v -i warning || true
python3 - <<'PY'
import torch, triton, diffusers, transformers
print(f"torch {torch.__version__} triton {triton.__version__} diffusers {diffusers.__version__} "
      f"transformers {transformers.__version__} gpu {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
PY
