"""CSV files with provenance: `# key: value` lines on top, then a plain table.

Read back with `read_csv(path)` (or `pandas.read_csv(path, comment="#")`). Writes are atomic:
a crash never leaves a half-written file behind.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from . import REPO_ROOT


def git_sha() -> str:
    """The checkout's commit: $MIXDQ_GIT_SHA when a job set it (the GPU machine's copy of the tree carries a stale
    .git, so its `git` names the wrong commit), else git, else the `.git_sha` stamp."""
    if os.environ.get("MIXDQ_GIT_SHA"):
        return os.environ["MIXDQ_GIT_SHA"] + " (stamp)"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = dirty = ""
    if not sha:
        stamp = REPO_ROOT / ".git_sha"
        return stamp.read_text().strip() + " (stamp)" if stamp.is_file() else "unknown"
    return sha + ("-dirty" if dirty else "")


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def provenance(**extra: Any) -> dict[str, Any]:
    """Where a result came from: code version, command, machine, library versions, plus `extra`."""
    import torch

    try:
        import diffusers
        diffusers_version = diffusers.__version__
    except ImportError:
        diffusers_version = "absent"
    return {
        "git_sha": git_sha(),
        "command": " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"] + sys.argv[1:]),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device_name(),
        "torch": torch.__version__,
        "diffusers": diffusers_version,
        **extra,
    }


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes files owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(df: pd.DataFrame, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write `df` atomically with `# key: value` provenance lines above the header."""
    head = "".join(f"# {k}: {str(v).replace(chr(10), ' ')}\n" for k, v in (meta or {}).items())
    atomic_write_text(path, head + df.to_csv(index=False))
    return Path(path)


def _comment_lines(path: Path) -> list[str]:
    lines = []
    with open(path) as f:
        for line in f:
            if not line.startswith("#"):
                break
            lines.append(line)
    return lines


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a CSV written by `write_csv` (only the leading `#` lines are skipped, so '#' in data is safe)."""
    path = Path(path)
    return pd.read_csv(path, skiprows=len(_comment_lines(path)))


def read_provenance(path: str | Path) -> dict[str, str]:
    out = {}
    for line in _comment_lines(Path(path)):
        key, _, value = line[1:].strip().partition(":")
        out[key.strip()] = value.strip()
    return out
