"""The tile configs the GEMM/conv kernels launch with: one `Tuning` object, its files, and the process's current one.

A Tuning maps a problem key (launch.linear_key / conv_key: shape and format) to the tile config picked for it:
loaded from tuning files, or timed in this process (`choose`) and then cached. Files are JSON
{gpu, capability, configs}; a file serves every GPU of its compute capability (an H100's file an H200: both sm_90).

`Tuning.standard(results_dir)` is the tuning a process normally runs with: the committed files
results_dir/kernels_tuning_<gpu>.json of this compute capability (other GPU models first, this one's last, so its
configs win), then this user's cache of this GPU model (~/.cache/mixdq/kernels_tuning_<gpu>.json), each file named
once as it loads; the shapes it times are merged into that cache at exit, so a GPU model is tuned once. The
environment overrides it here, and only here:
    MIXDQ_TUNING_FILE=<file>   load that file instead of the committed ones (`none`: none of them)
    MIXDQ_TUNING_CACHE=<file>  the per-user cache file (`none`: no cache)
    MIXDQ_TUNE=0               never time candidates (an untuned shape takes its first candidate)
    MIXDQ_FIXUP=1              also time the FIXUP split-K tile configs of the int8 linear (opt-in: launch.fixup_enabled)
The kernels run inside torch custom ops, whose arguments cannot carry a Python object, so the launches read the
process's current Tuning (`current_tuning`); its owner installs it with `use_tuning` (the Runner, bench_kernels).
Until one is installed, the current Tuning is an empty one that times what it launches and writes no file.
"""
from __future__ import annotations

import atexit
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

# Files written before `capability` was stored name only their GPU: these names map to a compute capability.
KNOWN_CAPABILITIES = {r"NVIDIA (GH|H)(100|200)\b": "sm_90", r"NVIDIA A100\b": "sm_80", r"NVIDIA A10G?$": "sm_86",
                      r"NVIDIA L(4|40S?)$": "sm_89", r"NVIDIA B200\b": "sm_100"}


def gpu_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def gpu_tag() -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia_h100_80gb_hbm3' (file-name part of per-GPU results)."""
    return re.sub(r"[^a-z0-9]+", "_", gpu_name().lower()).strip("_")


def capability() -> str:
    """This GPU's compute capability ('sm_90'); 'cpu' without CUDA."""
    if not torch.cuda.is_available():
        return "cpu"
    major, minor = torch.cuda.get_device_capability(0)
    return f"sm_{major}{minor}"


def file_capability(data: dict) -> str | None:
    """The compute capability a tuning file was made on: stored, or known from its GPU name (older files)."""
    if data.get("capability"):
        return data["capability"]
    gpu = data.get("gpu", "")
    if gpu == "cpu":
        return "cpu"
    return next((cap for pat, cap in KNOWN_CAPABILITIES.items() if re.match(pat, gpu)), None)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def cache_path(setting: str | None = None, stem: str = "kernels_tuning") -> Path | None:
    """This user's cache file `<stem>_<gpu>.json` of this GPU model (the tile configs; the layer plan's times);
    `setting` (an environment variable's value, e.g. MIXDQ_TUNING_CACHE): a file instead, or `none` for no cache."""
    if setting == "none":
        return None
    if setting:
        return Path(setting).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mixdq" / f"{stem}_{gpu_tag()}.json"


def committed_files(results_dir: Path, setting: str | None = None) -> list[Path]:
    """The committed tuning files to load, existing ones only: other GPU models' first, this GPU model's last (later
    files win where both tuned a shape); `setting` (MIXDQ_TUNING_FILE): one file instead, or `none`."""
    if setting == "none":
        return []
    if setting:
        return [p for p in [Path(setting)] if p.is_file()]
    own = results_dir / f"kernels_tuning_{gpu_tag()}.json"
    return sorted(p for p in results_dir.glob("kernels_tuning_*.json") if p != own) + ([own] if own.is_file() else [])


@dataclass
class Tuning:
    """Tile configs by problem key: loaded (`sources` names the files) or timed here (`timed`); `autotune=False`
    takes an unknown key's first candidate; `cache`: the file the timed configs are merged into at exit."""
    configs: dict[str, dict] = field(default_factory=dict)
    autotune: bool = True
    cache: Path | None = None
    sources: list[str] = field(default_factory=list)
    timed: set[str] = field(default_factory=set)
    forced_config: dict | None = None

    @classmethod
    def standard(cls, results_dir: str | Path, committed: bool = True) -> "Tuning":
        """The committed files of this compute capability in `results_dir` (none if not `committed`), then this user's
        cache; the environment overrides (module docstring) are read here."""
        env = os.environ
        t = cls(autotune=env.get("MIXDQ_TUNE", "1") != "0", cache=cache_path(env.get("MIXDQ_TUNING_CACHE")))
        files = committed_files(Path(results_dir), env.get("MIXDQ_TUNING_FILE")) if committed else []
        t.load_files(files + ([t.cache] if t.cache is not None and t.cache.is_file() else []))
        return t

    # ---- files
    def load(self, path: str | Path) -> tuple[int, str]:
        """Add the configs of a file tuned on this GPU model or another of its compute capability; returns how many
        (0 for a file of another architecture) and the GPU the file was tuned on."""
        data = json.loads(Path(path).read_text())
        gpu = data.get("gpu")
        if gpu != gpu_name() and file_capability(data) != capability():
            return 0, gpu
        self.configs.update(data["configs"])
        self.sources.append(str(path))
        return len(data["configs"]), gpu

    def load_files(self, paths: list[Path]) -> None:
        """Load each file, saying once what came from where; a damaged file is skipped with a line saying why."""
        for path in paths:
            try:
                n, gpu = self.load(path)
            except (OSError, ValueError, KeyError) as e:
                print(f"[kernels] tuning file {path} skipped: {type(e).__name__}: {str(e)[:120]}")
                continue
            same = "" if gpu == gpu_name() else f" (tuned on {gpu}, this is {gpu_name()}, {capability()})"
            print(f"[kernels] {n} tuned tile configs from {path}{same}")

    def save(self, path: str | Path, configs: dict[str, dict] | None = None) -> None:
        """Write `configs` (default: all of this Tuning's) with this GPU's name and compute capability, atomically."""
        _write_json(Path(path), {"gpu": gpu_name(), "capability": capability(),
                                 "configs": self.configs if configs is None else configs})

    def save_cache(self) -> Path | None:
        """Merge the configs timed here into the cache file (kept entries of an earlier process of this GPU model)."""
        if self.cache is None or not self.timed:
            return None
        configs = {}
        try:
            old = json.loads(self.cache.read_text())
            if old.get("gpu") == gpu_name():
                configs = old["configs"]
        except (OSError, ValueError, KeyError):
            pass  # no cache yet, or a damaged one: rewritten
        configs.update({k: self.configs[k] for k in self.timed if k in self.configs})
        self.save(self.cache, configs)
        print(f"[kernels] {len(self.timed)} newly tuned tile configs saved to {self.cache} ({len(configs)} in all)")
        return self.cache

    # ---- picking
    @contextmanager
    def forced(self, cfg: dict | None) -> Iterator[None]:
        """Every GEMM/conv inside the block runs with this tile config (correctness checks of each candidate)."""
        prev, self.forced_config = self.forced_config, cfg
        try:
            yield
        finally:
            self.forced_config = prev

    def choose(self, key: str, candidates: list[dict], time_ms: Callable[[dict], float]) -> dict:
        """The config for `key`: forced, known, or the fastest candidate by `time_ms(config)` (then remembered); the
        first candidate when timing is off, interpreted, or a CUDA graph is being captured."""
        if self.forced_config is not None:
            return self.forced_config
        cfg = self.configs.get(key)
        if cfg is not None:
            return cfg
        if interpreting() or not self.autotune or len(candidates) == 1 or torch.cuda.is_current_stream_capturing():
            return candidates[0]
        best, best_ms = None, float("inf")
        for c in candidates:
            try:
                ms = time_ms(c)
            except Exception as e:  # a config that does not fit this GPU (shared memory, registers): skip it
                print(f"[kernels] {key}: config {c} failed: {type(e).__name__}: {str(e)[:120]}")
                continue
            if ms < best_ms:
                best, best_ms = c, ms
        if best is None:
            raise RuntimeError(f"no kernel config ran for {key}")
        self.configs[key] = dict(best, ms=round(best_ms, 5))
        if not self.timed and self.cache is not None:
            atexit.register(self.save_cache)
        self.timed.add(key)
        return self.configs[key]


def _write_json(path: Path, data: dict) -> None:
    """Atomically (temp file + rename): a reader never sees half a file."""
    from ..csvio import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


_current: Tuning | None = None


def use_tuning(tuning: Tuning) -> Tuning:
    """Make `tuning` the one the kernels launch with in this process (returns it)."""
    global _current
    _current = tuning
    return tuning


def tuning_installed() -> bool:
    return _current is not None


def current_tuning() -> Tuning:
    """The Tuning the launches use: the installed one, else (first call) an empty one that times what it launches."""
    return _current if _current is not None else use_tuning(Tuning())
