"""quant_utils: MixDQ mixed-precision quantization and serving tools for SDXL-Turbo.

One module per concern; scripts in `scripts/` are thin wrappers around these.
Importable from the repo root (`import quant_utils`) with or without
PYTHONPATH=".:$(pwd)/quant_utils".
"""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_path(path: str | Path) -> Path:
    """Resolve a repo-relative path (absolute paths pass through)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p
