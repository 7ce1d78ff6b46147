"""CSV files with provenance: `# key: value` lines on top, then a plain table.

Read back with `read_csv(path)` (or `pandas.read_csv(path, comment="#")`). Writes are atomic:
a crash never leaves a half-written file behind. `atomic_file` / `atomic_folder` give every other writer of the
project (checkpoints, PNGs, downloads, quantized model folders, reference sets) the same guarantee.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

from . import REPO_ROOT
from .errors import ConfigError, reading

# Provenance keys that describe the run, not the result (see `write_csv(keep_unchanged=True)`).
RUN_KEYS = ("git_sha", "command", "date_utc", "device", "torch", "diffusers")


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


def cpu_name() -> str:
    """This machine's CPU model (for results measured on a CPU)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def temp_prefix(path: Path) -> str:
    """Temp files of `path` are `.<name>.<pid>.<random>.tmp` beside it: `clean_stale_temps` knows whose they are."""
    return f".{path.name}.{os.getpid()}."


def clean_stale_temps(folder: str | Path) -> int:
    """Remove temp files and folders left in `folder` by writers that died mid-write (e.g. `kill -9` during a save):
    those whose process is gone. Returns how many were removed."""
    removed = 0
    for tmp in Path(folder).glob(".*.tmp"):
        parts = tmp.name.split(".")  # ['', name..., pid, random, 'tmp']
        if len(parts) < 5 or not parts[-3].isdigit() or int(parts[-3]) == os.getpid():
            continue  # not one of ours, or our own
        try:
            os.kill(int(parts[-3]), 0)
            continue  # its writer is still running
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        if tmp.is_dir():  # a folder being filled (atomic_folder)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed += 1
    return removed


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Inside: write the file at the yielded temp path (beside `path`, same file system); when the block ends without
    an error it is renamed onto `path`, else removed, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes files owner-only
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Inside: fill the yielded temp folder (beside `path`); when the block ends without an error it replaces `path`
    (an existing one is moved aside first and removed after), else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp"))
    old = None
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def _without_run_keys(text: str) -> str:
    return "".join(ln for ln in text.splitlines(keepends=True)
                   if not (ln.startswith("# ") and ln[2:].split(":", 1)[0] in RUN_KEYS))


def write_csv(df: pd.DataFrame, path: str | Path, meta: dict[str, Any] | None = None, keep_unchanged: bool = False,
              float_format: str | None = None) -> Path:
    """Write `df` atomically with `# key: value` provenance lines above the header.

    `keep_unchanged`: when the file already holds this very table and provenance (only the git sha, command and
    date and machine differ), leave it as it is, so a rerun on the same inputs reproduces a committed file byte for byte.
    `float_format` (e.g. '%.6g') rounds floats, so last-bit noise of another BLAS does not show either."""
    head = "".join(f"# {k}: {str(v).replace(chr(10), ' ')}\n" for k, v in (meta or {}).items())
    text = head + df.to_csv(index=False, float_format=float_format)
    path = Path(path)
    if keep_unchanged and path.is_file():
        try:
            if _without_run_keys(path.read_text()) == _without_run_keys(text):
                return path
        except (OSError, UnicodeDecodeError):
            pass  # unreadable: overwrite it
    atomic_write_text(path, text)
    return path


def _comment_lines(path: Path) -> list[str]:
    lines = []
    with reading(path), open(path) as f:
        for line in f:
            if not line.startswith("#"):
                break
            lines.append(line)
    return lines


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a CSV written by `write_csv` (only the leading `#` lines are skipped, so '#' in data is safe).
    A missing, empty, binary or malformed file is a ConfigError naming it."""
    path = Path(path)
    skip = len(_comment_lines(path))
    with reading(path):
        return pd.read_csv(path, skiprows=skip)


def read_table(path: str | Path, columns: list[str], what: str) -> pd.DataFrame:
    """read_csv, refusing a file without `columns` as not a `what` CSV (ConfigError naming the file and the columns)."""
    df = read_csv(path)
    missing = [c for c in columns if c not in df]
    if missing:
        raise ConfigError(f"{path}: not a {what} CSV (lacks {missing})")
    return df


def read_runs(paths: list[Path], columns: list[str], what: str, label: Callable[[pd.DataFrame], pd.Series],
              keep_first: bool = False, hint: str = "") -> pd.DataFrame:
    """Several runs' CSVs (read_table) as one table, where a speed-up is only meaningful against its own run's
    baseline: `label(df)` names what each row measures ('' for rows every run repeats, e.g. its baseline), and a
    label found in an earlier file is refused (ConfigError, + `hint`), or with `keep_first` that file's rows win."""
    frames, seen = [], {}
    for path in paths:
        df = read_table(path, columns, what)
        labels = label(df)
        again = labels.ne("") & labels.isin(list(seen))
        for name in dict.fromkeys(labels[again]):
            if not keep_first:
                raise ConfigError(f"{path}: {name} is also in {seen[name]}{hint}")
            print(f"{name}: {Path(seen[name]).name}'s row kept, {Path(path).name}'s left out")
        for name in labels[~again & labels.ne("")]:
            seen.setdefault(name, path)
        frames.append(df[~again.to_numpy()])
    return pd.concat(frames, ignore_index=True)


def read_provenance(path: str | Path) -> dict[str, str]:
    out = {}
    for line in _comment_lines(Path(path)):
        key, _, value = line[1:].strip().partition(":")
        out[key.strip()] = value.strip()
    return out
