"""Performance model of SDXL-Turbo serving: latency (p50, p95) and peak memory over bits x resolution x batch.

Fitted from latency_probe CSVs (`results/latency_<mode>.csv`, one row per (mode, exec, res, batch)
cell) separately for every (mode, exec). Each stage is a fixed cost plus costs proportional to the
work it does, so it predicts resolutions and batches that were not measured:

    text     = a + b*batch                                     (77 tokens per prompt, resolution-free)
    unet     = steps * (a + b*Mpix + c*ktok^2)                 (per step: launch floor, convs, self-attention)
    vae      = a + b*Mpix1 + c*Mpix + d*ktok^2                 (convs, mid-block attention at latent size)
    overhead = a + b*batch + c*Mpix                            (total - sum of stages: host work, copy to host)
    total    = text + unet + vae + overhead
    memory   = a + b*Mpix1 + c*Mpix + d*ktok^2                 (weights + activations), GiB

with Mpix = batch*h*w/1e6, Mpix1 = h*w/1e6 (one image: a per-call cost that grows with resolution but
not with batch: a batch-1 VAE decode costs more than an extra image of a batch, at every resolution
measured) and ktok^2 = batch*(h*w/64/1000)^2 (latent tokens h/8*w/8, squared, per image).
Coefficients are non-negative (NNLS) and fitted on relative error, so predictions are monotone in
pixels and batch. p95 = add_ms + (1 + rel) * p50 per stage, (add_ms, rel) >= 0 fitted on the
measured cells. Fit error is leave-one-out over the measured cells. Nothing here touches torch.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from .csvio import atomic_write_text, read_csv, read_provenance
from .errors import ConfigError, reading
from .modes import FP16, mode_key, mode_wbits

FORMAT = "mixdq-perf-model/1"
STAGES = ("text", "unet", "vae")
FEATURES: dict[str, tuple[str, ...]] = {
    "text": ("fixed", "batch"),
    "unet": ("steps", "steps_mpix", "steps_ktok2"),
    "vae": ("fixed", "mpix1", "mpix", "ktok2"),
    "overhead": ("fixed", "batch", "mpix"),
    "total": ("fixed", "batch", "mpix", "ktok2"),  # only when a CSV has no per-stage columns
    "memory": ("fixed", "mpix1", "mpix", "ktok2"),
}
FEATURE_UNITS = {
    "fixed": "per call", "batch": "per image", "mpix": "per megapixel (batch*h*w/1e6)",
    "mpix1": "per megapixel of one image (h*w/1e6), per call",
    "ktok2": "per (1000 latent tokens)^2 per image", "steps": "per UNet step",
    "steps_mpix": "per step per megapixel", "steps_ktok2": "per step per (1000 latent tokens)^2 per image",
}
LOO_TARGETS = ("text_p50_ms", "unet_p50_ms", "vae_p50_ms", "total_p50_ms", "total_p95_ms", "peak_mem_gib")
REQUIRED_COLUMNS = ("mode", "exec", "height", "width", "batch", "total_p50_ms", "total_p95_ms")
# A mode (quant_utils/modes.py) may carry its decoder, `w8a8+tiny`: each such key is fitted as its own group, so the
# simulator and the policies trade the decoder like any other option of the ladder.


def normalize_latency_frame(df: pd.DataFrame) -> pd.DataFrame:
    """latency_probe and bench_e2e tables in one schema: `res` -> height/width, `unet_exec` -> exec, and the
    decoder folded into the mode key (mode_key)."""
    df = df.copy()
    if "height" not in df and "res" in df:
        df["height"] = df["width"] = df["res"]
    if "exec" not in df and "unet_exec" in df:
        df["exec"] = df["unet_exec"]
    if "vae" in df and "mode" in df:
        df["mode"] = [mode_key(str(m), v) for m, v in zip(df["mode"], df["vae"])]
    return df


# --------------------------------------------------------------------------- features and fits
def feature_columns(height, width, batch, steps) -> dict[str, np.ndarray]:
    """All feature columns for arrays (or scalars) of cells; see the module docstring for units."""
    h, w, b, s = (np.asarray(x, dtype=float) for x in (height, width, batch, steps))
    mpix = b * h * w / 1e6
    ktok2 = b * (h * w / 64.0 / 1000.0) ** 2
    one = np.ones(np.broadcast(h, w, b, s).shape)
    return {"fixed": one, "batch": b * one, "mpix": mpix * one, "mpix1": h * w / 1e6 * one, "ktok2": ktok2 * one,
            "steps": s * one,
            "steps_mpix": s * mpix, "steps_ktok2": s * ktok2}


def _independent(X: np.ndarray, names: Sequence[str]) -> list[int]:
    """Columns that add rank, in order: a feature the data cannot tell apart from earlier ones is dropped
    (e.g. 'batch' when every cell has batch 1), so the fit stays identified and interpretable."""
    keep: list[int] = []
    for j in range(len(names)):
        if np.linalg.matrix_rank(X[:, keep + [j]], tol=1e-9 * max(1.0, np.abs(X).max())) == len(keep) + 1:
            keep.append(j)
    return keep


def nnls_fit(X: np.ndarray, y: np.ndarray, relative: bool = True) -> np.ndarray:
    """Non-negative least squares, c >= 0; `relative` minimises sum(((X c - y) / y)^2) (every cell counts
    alike, so a 512-px cell is fitted as well as a 1024-px one), else sum((X c - y)^2)."""
    A, b = (X / y[:, None], np.ones(len(y))) if relative else (X, y)
    scale = np.linalg.norm(A, axis=0)  # column scaling: features differ by orders of magnitude
    scale[scale == 0] = 1.0
    c, _ = nnls(A / scale, b)
    # a coefficient at the bound comes back as 0 or as round-off (1e-17 on one numpy/scipy, 0 on another):
    # both mean 0, and the written model must not depend on which
    c[c <= 1e-12 * max(c.max(), 1e-300)] = 0.0
    return c / scale


@dataclass
class LinearFit:
    """target = sum(coef[f] * feature f); coefficients in the target's unit per feature unit."""
    coef: dict[str, float]

    @classmethod
    def fit(cls, cols: dict[str, np.ndarray], names: Sequence[str], y: np.ndarray, relative: bool = True) -> "LinearFit":
        X = np.stack([cols[n] for n in names], axis=1)
        keep = _independent(X, names)
        c = nnls_fit(X[:, keep], y, relative)
        coef = {n: 0.0 for n in names}
        coef.update({names[j]: float(v) for j, v in zip(keep, c)})
        return cls(coef)

    def __call__(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        return sum(v * cols[k] for k, v in self.coef.items())


@dataclass
class Spread:
    """p95 = add_ms + (1 + rel) * p50 (both >= 0, so p95 >= p50)."""
    add_ms: float = 0.0
    rel: float = 0.0

    @classmethod
    def fit(cls, p50: np.ndarray, p95: np.ndarray) -> "Spread":
        gap = np.maximum(p95 - p50, 0.0)
        if not np.any(gap > 0):
            return cls()
        (a, r), _ = nnls(np.stack([np.ones_like(p50), p50], axis=1), gap)
        return cls(float(a), float(r))

    def __call__(self, p50):
        return self.add_ms + (1.0 + self.rel) * p50


# --------------------------------------------------------------------------- one (mode, exec) group
@dataclass
class GroupModel:
    """The fitted model of one (mode, exec): stage fits, p95 spreads, memory, fit error and data ranges."""
    mode: str
    exec: str
    wbits: float
    abits: float | None
    backend: str
    steps: int
    n_cells: int
    pixels: tuple[int, int]
    batches: tuple[int, int]
    p50: dict[str, LinearFit]
    spread: dict[str, Spread]
    memory: LinearFit | None = None
    loo: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def staged(self) -> bool:
        return "unet" in self.p50

    @classmethod
    def fit(cls, df: pd.DataFrame) -> "GroupModel":
        cols = feature_columns(df["height"], df["width"], df["batch"], _steps(df))
        staged = all(f"{s}_p50_ms" in df and df[f"{s}_p50_ms"].notna().all() for s in STAGES)
        p50, spread = {}, {}
        if staged:
            for s in STAGES:
                p50[s] = LinearFit.fit(cols, FEATURES[s], df[f"{s}_p50_ms"].to_numpy(float))
                if f"{s}_p95_ms" in df and df[f"{s}_p95_ms"].notna().all():
                    spread[s] = Spread.fit(df[f"{s}_p50_ms"].to_numpy(float), df[f"{s}_p95_ms"].to_numpy(float))
            stage_sum = sum(df[f"{s}_p50_ms"].to_numpy(float) for s in STAGES)
            resid = df["total_p50_ms"].to_numpy(float) - stage_sum
            # the residual can be ~0 or slightly negative (timer jitter): fit it in absolute ms, clipped at 0
            p50["overhead"] = LinearFit.fit(cols, FEATURES["overhead"], np.maximum(resid, 0.0), relative=False)
        else:
            p50["total"] = LinearFit.fit(cols, FEATURES["total"], df["total_p50_ms"].to_numpy(float))
        spread["total"] = Spread.fit(df["total_p50_ms"].to_numpy(float), df["total_p95_ms"].to_numpy(float))
        memory = None
        if "peak_mem_gib" in df and df["peak_mem_gib"].notna().all() and (df["peak_mem_gib"] > 0).all():
            memory = LinearFit.fit(cols, FEATURES["memory"], df["peak_mem_gib"].to_numpy(float))
        pix = (df["height"] * df["width"]).astype(int)
        first = df.iloc[0]
        model = cls(mode=str(first["mode"]), exec=str(first["exec"]),
                    wbits=float(first["wbits"]) if "wbits" in df else mode_wbits(str(first["mode"])),
                    abits=float(first["abits"]) if "abits" in df and pd.notna(first["abits"]) else None,
                    backend=str(first.get("backend", "unknown")), steps=int(pd.Series(_steps(df)).mode()[0]),
                    n_cells=len(df), pixels=(int(pix.min()), int(pix.max())),
                    batches=(int(df["batch"].min()), int(df["batch"].max())), p50=p50, spread=spread, memory=memory)
        return model

    def predict(self, height, width, batch, steps=None) -> dict[str, np.ndarray]:
        steps = self.steps if steps is None else steps
        cols = feature_columns(height, width, batch, steps)
        out: dict[str, np.ndarray] = {}
        if self.staged:
            for s in STAGES:
                out[f"{s}_p50_ms"] = self.p50[s](cols)
                if s in self.spread:
                    out[f"{s}_p95_ms"] = self.spread[s](out[f"{s}_p50_ms"])
            out["overhead_ms"] = self.p50["overhead"](cols)
            out["total_p50_ms"] = sum(out[f"{s}_p50_ms"] for s in STAGES) + out["overhead_ms"]
        else:
            out["total_p50_ms"] = self.p50["total"](cols)
        out["total_p95_ms"] = self.spread["total"](out["total_p50_ms"])
        if self.memory is not None:
            out["peak_mem_gib"] = self.memory(cols)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pixels"], d["batches"] = list(self.pixels), list(self.batches)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GroupModel":
        d = dict(d)
        d["p50"] = {k: LinearFit(**v) for k, v in d["p50"].items()}
        d["spread"] = {k: Spread(**v) for k, v in d["spread"].items()}
        d["memory"] = LinearFit(**d["memory"]) if d.get("memory") else None
        d["pixels"], d["batches"] = tuple(d["pixels"]), tuple(d["batches"])
        return cls(**d)


def _steps(df: pd.DataFrame) -> np.ndarray:
    return df["steps"].to_numpy(int) if "steps" in df else np.ones(len(df), dtype=int)


def leave_one_out(df: pd.DataFrame) -> pd.DataFrame:
    """Per measured cell of one (mode, exec): the prediction of a model fitted on the other cells,
    and its error in percent, for every target the data has (text/unet/vae/total p50, total p95, memory)."""
    rows = []
    df = df.reset_index(drop=True)
    if len(df) < 3:  # two cells cannot hold one out and still fit a fixed + slope model
        return pd.DataFrame(columns=["mode", "exec", "height", "width", "batch", "target", "measured", "predicted", "err_pct"])
    for i in range(len(df)):
        m = GroupModel.fit(df.drop(index=i))
        cell = df.iloc[i]
        pred = m.predict(cell["height"], cell["width"], cell["batch"], int(_steps(df)[i]))
        for t in LOO_TARGETS:
            if t in pred and t in df and pd.notna(cell[t]) and cell[t] > 0:
                p = float(pred[t])
                rows.append(dict(mode=cell["mode"], exec=cell["exec"], height=int(cell["height"]), width=int(cell["width"]),
                                 batch=int(cell["batch"]), target=t, measured=float(cell[t]), predicted=p,
                                 err_pct=round(100.0 * (p - cell[t]) / cell[t], ERR_PCT_DECIMALS)))
    return pd.DataFrame(rows)


# Written numbers keep what the fit means, not its last bits: a refit of the same CSVs on another numpy/scipy/BLAS
# differs in the 15th digit, and `make report` must leave the committed files as they are.
ERR_PCT_DECIMALS = 6
SIGNIFICANT_DIGITS = 10


def _significant(obj):
    """obj with every float rounded to SIGNIFICANT_DIGITS significant digits (NaN and inf kept)."""
    if isinstance(obj, float):
        return float(f"{obj:.{SIGNIFICANT_DIGITS}g}")
    if isinstance(obj, dict):
        return {k: _significant(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_significant(v) for v in obj]
    return obj


def summarize_errors(loo: pd.DataFrame) -> dict[str, dict[str, float]]:
    """target -> {n, median_abs_pct, max_abs_pct} over the held-out cells."""
    out = {}
    for t, g in loo.groupby("target", sort=False) if len(loo) else []:
        a = g["err_pct"].abs()
        out[t] = {"n": int(len(g)), "median_abs_pct": float(a.median()), "max_abs_pct": float(a.max())}
    return out


# --------------------------------------------------------------------------- the whole model
@dataclass
class PerfModel:
    """Per-(mode, exec) fits plus provenance. `predict`, `capacity`, `save`/`load`."""
    groups: dict[str, dict[str, GroupModel]]
    gpu: str = "unknown"
    weights: str = "unknown"
    sources: list[str] = field(default_factory=list)
    synthetic: bool = False
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    loo_cells: pd.DataFrame | None = field(default=None, repr=False)  # per-cell LOO errors of the last fit (not saved)

    # ---- construction
    @classmethod
    def fit(cls, df: pd.DataFrame, sources: Iterable[str] = (), gpu: str | None = None, weights: str | None = None,
            synthetic: bool = False, note: str = "", with_loo: bool = True) -> "PerfModel":
        """Fit every (mode, exec) group of a latency table (latency_probe's columns)."""
        df = normalize_latency_frame(df)
        missing = [c for c in REQUIRED_COLUMNS if c not in df]
        if missing:
            raise ConfigError(f"latency table lacks column(s) {missing} (latency_probe writes {list(REQUIRED_COLUMNS)} and more)")
        if df.empty:
            raise ConfigError("latency table has no rows")
        groups: dict[str, dict[str, GroupModel]] = {}
        loo_frames = []
        for (mode, ex), g in df.groupby(["mode", "exec"], sort=True):
            gm = groups.setdefault(str(mode), {})[str(ex)] = GroupModel.fit(g.reset_index(drop=True))
            if with_loo:
                loo_frames.append(leave_one_out(g))
                gm.loo = summarize_errors(loo_frames[-1])
        gpu = gpu or (", ".join(sorted(df["gpu"].astype(str).unique())) if "gpu" in df else "unknown")
        weights = weights or (", ".join(sorted(df["weights"].astype(str).unique())) if "weights" in df else "unknown")
        if "gpu" in df and (df["gpu"].astype(str) == "synthetic").all() and not synthetic:
            synthetic, note = True, note or "SYNTHETIC: fitted from a synthetic latency table, not a measurement"
        return cls(groups=groups, gpu=gpu, weights=weights, sources=[str(s) for s in sources], synthetic=synthetic,
                   note=note, loo_cells=pd.concat(loo_frames, ignore_index=True) if loo_frames else None)

    @classmethod
    def fit_csvs(cls, paths: Sequence[str | Path], modes: Sequence[str] | None = None, **kw) -> "PerfModel":
        """Fit the CSVs' rows; `modes`: only these mode keys (`w8a8`, `w8a8+int8`, ...), each of which must be there."""
        frames = []
        for p in paths:
            if not Path(p).is_file():
                raise ConfigError(f"latency CSV {p} does not exist (scripts/latency_probe.py writes it)")
            f = read_csv(p)
            if "backend" not in f and "mode" in f:  # bench_e2e names it once, in its provenance: 'kernel (quantized modes)'
                kind = str(read_provenance(p).get("backend", "unknown")).split(" ")[0]
                f["backend"] = ["none" if str(m) == FP16 else kind for m in f["mode"]]
            frames.append(f)
        df = pd.concat(frames, ignore_index=True)
        if modes:
            keys = normalize_latency_frame(df)["mode"]
            unknown = sorted(set(modes) - set(keys))
            if unknown:
                raise ConfigError(f"mode(s) {unknown} not in the CSVs (they hold {sorted(set(keys))})")
            df = df[keys.isin(modes).to_numpy()].reset_index(drop=True)
        prov = read_provenance(paths[0])
        kw.setdefault("gpu", prov.get("gpu") or prov.get("device"))  # bench_e2e names only the device
        kw.setdefault("weights", prov.get("weights"))
        return cls.fit(df, sources=[_repo_relative(p) for p in paths], **kw)

    # ---- queries
    @property
    def modes(self) -> list[str]:
        return sorted(self.groups, key=lambda m: (-self.group(m).wbits, m))

    def default_exec(self, mode: str) -> str:
        ex = self._mode(mode)
        return "graph" if "graph" in ex else ("compile" if "compile" in ex else sorted(ex)[0])

    def _mode(self, mode: str) -> dict[str, GroupModel]:
        if mode not in self.groups:
            raise ConfigError(f"mode {mode!r} is not in the performance model (it has {sorted(self.groups)})")
        return self.groups[mode]

    def group(self, mode: str, exec: str | None = None) -> GroupModel:
        ex = self._mode(mode)
        exec = exec or self.default_exec(mode)
        if exec not in ex:
            raise ConfigError(f"mode {mode!r} has no exec {exec!r} in the performance model (it has {sorted(ex)})")
        return ex[exec]

    def predict(self, mode: str, height, width, batch=1, steps=None, exec: str | None = None) -> dict[str, Any]:
        """Per-stage and total p50/p95 ms and peak GiB for cells; scalars in -> floats out, arrays broadcast."""
        _check_cells(height, width, batch)
        out = self.group(mode, exec).predict(height, width, batch, steps)
        scalar = all(np.ndim(x) == 0 for x in (height, width, batch))
        return {k: float(v) for k, v in out.items()} if scalar else out

    def capacity(self, mode: str, res: int | tuple[int, int], batch: int = 1, exec: str | None = None,
                 steps: int | None = None) -> float:
        """Images per second of one replica kept busy with full batches (batch / total p50)."""
        h, w = (res, res) if np.ndim(res) == 0 else res
        return float(batch / (self.predict(mode, h, w, batch, steps, exec)["total_p50_ms"] / 1000.0))

    def backends_label(self) -> str:
        """Which backend each mode's measurements ran on, for provenance: 'fp16=none w8a8=kernel ...'."""
        return " ".join(f"{m}={'/'.join(sorted({g.backend for g in ex.values()}))}" for m, ex in sorted(self.groups.items()))

    def thin_data(self) -> list[str]:
        """One line per (mode, exec) whose cells cannot check what the model predicts beyond them: fewer than three
        cells (no leave-one-out error), one resolution, or one batch size."""
        out = []
        for m, ex in sorted(self.groups.items()):
            for e, g in sorted(ex.items()):
                why = ([f"{g.n_cells} cells (no held-out error)"] if g.n_cells < 3 else []) + (
                    [f"one resolution ({round(g.pixels[0] ** 0.5)} px)"] if g.pixels[0] == g.pixels[1] else []) + (
                    [f"one batch size ({g.batches[0]})"] if g.batches[0] == g.batches[1] else [])
                if why:
                    out.append(f"{m} ({e}): {', '.join(why)}: its predictions elsewhere are extrapolations")
        return out

    def fit_error(self) -> pd.DataFrame:
        rows = [dict(mode=m, exec=e, target=t, **v) for m, ex in self.groups.items() for e, g in ex.items()
                for t, v in g.loo.items()]
        return pd.DataFrame(rows, columns=["mode", "exec", "target", "n", "median_abs_pct", "max_abs_pct"])

    # ---- persistence
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "synthetic": self.synthetic, "note": self.note, "gpu": self.gpu,
                "weights": self.weights, "sources": self.sources,
                "form": {"features": {k: list(v) for k, v in FEATURES.items()}, "feature_units": FEATURE_UNITS,
                         "latency_unit": "ms", "memory_unit": "GiB",
                         "p95": "add_ms + (1 + rel) * p50", "total": "text + unet + vae + overhead"},
                "fit_error": self.fit_error().to_dict(orient="records"),
                "models": {m: {e: g.to_dict() for e, g in ex.items()} for m, ex in self.groups.items()},
                **({"extra": self.extra} if self.extra else {})}

    def save(self, path: str | Path) -> Path:
        atomic_write_text(path, json.dumps(_significant(self.to_dict()), indent=1) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "PerfModel":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(
                f"performance model {_repo_relative(p)} does not exist: fit it from latency_probe CSVs with\n"
                f"  python scripts/fit_perf_model.py --csv results/latency_*.csv --out {_repo_relative(p)}\n"
                f"  (or, to try things out, a labelled synthetic one: python scripts/fit_perf_model.py --synthetic "
                f"--out logs/perf_model_synthetic.json, then pass --perf_model logs/perf_model_synthetic.json)")
        with reading(p, "performance model"):
            d = json.loads(p.read_text())
        if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("models"), dict):
            raise ConfigError(f"{p}: format {d.get('format') if isinstance(d, dict) else None!r}, expected {FORMAT!r}")
        groups = {m: {e: GroupModel.from_dict(g) for e, g in ex.items()} for m, ex in d["models"].items()}
        return cls(groups=groups, gpu=d.get("gpu", "unknown"), weights=d.get("weights", "unknown"),
                   sources=d.get("sources", []), synthetic=bool(d.get("synthetic", False)), note=d.get("note", ""),
                   extra=d.get("extra", {}))


def _repo_relative(path: str | Path) -> str:
    from . import REPO_ROOT

    p = Path(path).resolve()
    return str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p)


def _check_cells(height, width, batch) -> None:
    for name, v in (("height", height), ("width", width)):
        a = np.asarray(v)
        if np.any(a <= 0) or np.any(a % 8):
            raise ConfigError(f"{name}={v}: image sides must be positive multiples of 8")
    if np.any(np.asarray(batch) < 1):
        raise ConfigError(f"batch={batch}: must be >= 1")


# --------------------------------------------------------------------------- synthetic data (tests, demos)
# Shaped after the H100 FP16 graph-mode measurements (results/latency_fp16.csv: UNet 15/22/30 ms and VAE 22/51/91 ms
# at 512/768/1024 batch 1); the quantized modes' factors are invented. SYNTHETIC: never a result.
SYNTHETIC_PARAMS: dict[str, dict[str, Any]] = {
    "fp16": {"wbits": 16, "abits": 16, "unet_scale": 1.00, "unet_gib": 4.78},
    "w8a8": {"wbits": 8, "abits": 8, "unet_scale": 0.85, "unet_gib": 2.39},
    "w6a8": {"wbits": 6, "abits": 8, "unet_scale": 0.80, "unet_gib": 1.79},
    "w4a8": {"wbits": 4, "abits": 8, "unet_scale": 0.75, "unet_gib": 1.20},
}
SYNTHETIC_BASE = {
    "text": {"fixed": 3.7, "batch": 0.5},
    "unet": {"steps": 10.0, "steps_mpix": 13.6, "steps_ktok2": 0.011},
    "vae": {"fixed": 1.0, "mpix1": 38.0, "mpix": 45.0, "ktok2": 0.02},
    "overhead": {"fixed": 0.5, "batch": 0.2, "mpix": 2.0},
    "memory": {"fixed": 1.6, "mpix1": 1.0, "mpix": 0.06, "ktok2": 0.0},  # + the UNet's weights
    "spread": {"add_ms": 0.3, "rel": 0.06},
}


def synthetic_latency_frame(modes: Sequence[str] = ("fp16", "w8a8", "w6a8", "w4a8"), res: Sequence[int] = (512, 768, 1024),
                            batches: Sequence[int] = (1, 2, 4, 8), steps: int = 1, noise: float = 0.02, seed: int = 0,
                            exec: str = "graph", base: dict | None = None) -> pd.DataFrame:
    """A latency table in latency_probe's schema generated from the model's own form (+ lognormal noise of
    relative std `noise`); `gpu` and `weights` say 'synthetic'. For tests, benchmarks and demos only."""
    base = base or SYNTHETIC_BASE
    rng = np.random.default_rng(seed)
    rows = []
    for mode in modes:
        par = SYNTHETIC_PARAMS[mode]
        for r in res:
            for b in batches:
                cols = feature_columns(r, r, b, steps)
                jit = lambda x: float(x * np.exp(noise * rng.standard_normal()))  # noqa: E731
                st = {s: sum(v * cols[k] for k, v in base[s].items()) for s in ("text", "unet", "vae", "overhead")}
                st["unet"] = st["unet"] * par["unet_scale"]
                p50 = {s: jit(st[s]) for s in st}
                sp = Spread(**base["spread"])
                row = dict(mode=mode, wbits=par["wbits"], abits=par["abits"], backend="synthetic", exec=exec, height=r,
                           width=r, batch=b, steps=steps, repeats=30)
                for s in STAGES:
                    row[f"{s}_p50_ms"], row[f"{s}_p95_ms"] = p50[s], float(sp(p50[s]))
                tot = sum(p50.values())
                row.update(total_p50_ms=tot, total_p95_ms=float(sp(tot)), total_mean_ms=tot * 1.01)
                row["images_per_s"] = b / (row["total_mean_ms"] / 1000)
                mem = par["unet_gib"] + sum(v * cols[k] for k, v in base["memory"].items())
                row.update(peak_mem_gib=jit(float(mem)), unet_weight_bytes=int(par["unet_gib"] * 2**30),
                           gpu="synthetic", weights="synthetic")
                rows.append(row)
    return pd.DataFrame(rows)
