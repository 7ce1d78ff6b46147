"""Bit allocation: one bit-width per layer from measured sensitivity, under an average-bit budget.

MixDQ's "metric-decoupled" search (Zhao et al., ECCV 2024, Sec. 3.3): layers are split into two
groups by what their quantization damages, and each group is scored by its own metric:
- **content** layers (cross-attention `attn2` and feed-forward `ff` of transformer blocks) by the
  SSIM of the image against the FP16 image (they change *what* is drawn);
- **quality** layers (everything else) by the SQNR of the UNet output (they add noise).

`allocate()` solves one integer linear program (scipy.optimize.milp, HiGHS) over all layers:

    maximise   cw * sum_content score_ssim(l, b_l) + (1 - cw) * sum_quality score_sqnr(l, b_l)
    subject to sum_l size_l * b_l <= budget * sum_l size_l,    one b_l per layer (or tied group)

Each metric is normalised so its scores are comparable: score(l, b) = -(s(l, b_max) - s(l, b)) / D,
with D the group's summed drop when every layer of the group sits at its lowest candidate bits.
So 0 = the whole group at its highest bits, -1 = the whole group at its lowest, and `cw`
(content weight, 0..1) sets how many bits the content group gets relative to the quality group.
Per metric the normalisation is affine, so within a group the choice is exactly MixDQ's
(which maximises raw summed metric values per group); MixDQ instead splits the budget between
the two groups by a swept ratio `k` and solves two programs (`optimize/integer_programming.py`).

Sizes: parameter count for weights (MixDQ's `weight_ratio_config.yaml` = weight numel / 11520 on
SDXL-Turbo), the input activation size for activations (`act_ratio_config.yaml`).
"""
from __future__ import annotations

import math
import os
import re
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from . import repo_path
from .bitconfig import normalize_name, read_yaml_mapping
from .errors import ConfigError

KINDS = ("weight", "act")
METRICS = ("sqnr", "ssim")
DEFAULT_SENS_BITS = (2, 4, 8)            # what MixDQ's score lists hold, in order
CONTENT_BITS = {"weight": (2, 4, 8), "act": (4, 8)}   # MixDQ's candidates for content layers
QUALITY_BITS = {"weight": (4, 8), "act": (4, 8)}      # ... and for quality layers (2-bit SQNR is far too low)
_CONTENT = re.compile(r"(^|\.)(attn2|ff)\.")           # MixDQ: `'ff' in name or 'attn2' in name`
_TIES = {"none": None,
         # layers reading the same input tensor: one quantized input serves a fused projection
         "shared_input": re.compile(r"^(.*\.attn1)\.to_[qkv]$|^(.*\.attn2)\.to_[kv]$")}
TIE_MODES = tuple(_TIES)


def is_content_layer(name: str) -> bool:
    """MixDQ's content-related layers: cross-attention and feed-forward of transformer blocks."""
    return bool(_CONTENT.search(normalize_name(name)))


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Sensitivity:
    """Per-layer scores of one kind (weight or act); names are diffusers module names."""
    kind: str
    bits: tuple[int, ...]                  # bit-widths the score lists refer to, in order
    sqnr: dict[str, list[float]]           # all layers: SQNR (dB) of the UNet output, higher is better
    ssim: dict[str, list[float]]           # content layers: SSIM vs FP16 images, higher is better
    sizes: dict[str, float]                # relative tensor size (parameters or input activation)
    unit_elems: float | None = None        # elements per size unit (for bytes), when known

    @property
    def layers(self) -> list[str]:
        return sorted(self.sqnr)

    def score(self, name: str, bits: int) -> float:
        table = self.ssim if is_content_layer(name) else self.sqnr
        return float(table[name][self.bits.index(bits)])


def read_scores(path: str | Path, n_bits: int) -> dict[str, list[float]]:
    """A `sensitivity.yaml` (layer -> list of one score per candidate bit-width); names normalised."""
    p = repo_path(path)
    out = {}
    for name, vals in read_yaml_mapping(p, "sensitivity file").items():
        if not isinstance(vals, list) or len(vals) != n_bits or not all(isinstance(v, (int, float)) for v in vals):
            raise ConfigError(f"{p}: layer '{name}' has {vals!r}, expected a list of {n_bits} numbers")
        out[normalize_name(str(name))] = [float(v) for v in vals]
    return out


def read_sizes(path: str | Path) -> dict[str, float]:
    """A tensor-ratio YAML (layer -> relative size > 0); names normalised."""
    p = repo_path(path)
    out = {normalize_name(str(k)): v for k, v in read_yaml_mapping(p, "tensor-ratio file").items()}
    bad = [k for k, v in out.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0]
    if bad:
        raise ConfigError(f"{p}: layer '{bad[0]}' has size {out[bad[0]]!r}, expected a positive number")
    return {k: float(v) for k, v in out.items()}


def load_sensitivity(sensitivity_dir: str | Path, kind: str, ratio_config: str | Path | None = None) -> Sensitivity:
    """Read `<dir>/<kind>/{sqnr,ssim}/sensitivity.yaml`, `<dir>/<kind>/meta.yaml` (bits) and the size ratios.

    Layout (MixDQ's, one folder per model): `<dir>/<kind>/<metric>/sensitivity.yaml`,
    `<dir>/tensor_ratio/<kind>_ratio_config.yaml` (+ optional `tensor_ratio/meta.yaml` with
    `<kind>_unit_elems`). Without a meta.yaml the score lists are taken as 2/4/8 bits.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r}, expected one of {KINDS}")
    root = repo_path(sensitivity_dir)
    meta_path = root / kind / "meta.yaml"
    meta = read_yaml_mapping(meta_path, "sensitivity meta file") if meta_path.is_file() else {}
    bits = tuple(int(b) for b in meta.get("bits", DEFAULT_SENS_BITS))
    sqnr = read_scores(root / kind / "sqnr" / "sensitivity.yaml", len(bits))
    ssim_path = root / kind / "ssim" / "sensitivity.yaml"
    ssim = read_scores(ssim_path, len(bits)) if ssim_path.is_file() else {}
    ratio = repo_path(ratio_config) if ratio_config else root / "tensor_ratio" / f"{kind}_ratio_config.yaml"
    sizes = read_sizes(ratio)
    ratio_meta = ratio.parent / "meta.yaml"
    unit = read_yaml_mapping(ratio_meta, "tensor-ratio meta file").get(f"{kind}_unit_elems") if ratio_meta.is_file() else None
    missing_size = sorted(set(sqnr) - set(sizes))
    if missing_size:
        raise ConfigError(f"{ratio}: no size for {len(missing_size)} layer(s) of the sensitivity data, "
                          f"e.g. '{missing_size[0]}'")
    no_ssim = [n for n in sqnr if is_content_layer(n) and n not in ssim]
    if no_ssim:
        raise ConfigError(f"{ssim_path}: {len(no_ssim)} content layer(s) (attn2/ff) have no SSIM score, "
                          f"e.g. '{no_ssim[0]}'")
    stray = sorted(set(ssim) - set(sqnr))
    if stray:
        raise ConfigError(f"{ssim_path}: layer '{stray[0]}' has SSIM but no SQNR score")
    return Sensitivity(kind, bits, sqnr, ssim, {k: sizes[k] for k in sqnr}, float(unit) if unit else None)


# --------------------------------------------------------------------------- the integer program
@dataclass(frozen=True)
class Choice:
    """One decision of the program: the layers in `layers` share one bit-width out of `options`."""
    layers: tuple[str, ...]
    size: float
    options: dict[int, float]              # bits -> objective contribution (higher is better)


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """HiGHS prints internal debug lines from C++ (`transformNewIntegerFeasibleSolution`) even with disp
    off; they go to file descriptor 1, so silence that for the solve."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def solve_choices(choices: list[Choice], budget: float, time_limit: float = 60.0) -> list[int]:
    """Maximise the summed option values with sum(size * bits) <= budget * sum(size); returns bits per choice.

    A multiple-choice knapsack as a MILP: one binary per (choice, option), exactly one per choice.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    if not choices:
        return []
    cols = [(i, b) for i, ch in enumerate(choices) for b in sorted(ch.options)]
    total = sum(ch.size for ch in choices)
    lowest = sum(ch.size * min(ch.options) for ch in choices) / total
    highest = sum(ch.size * max(ch.options) for ch in choices) / total
    if not math.isfinite(budget) or budget < lowest - 1e-9:
        raise ConfigError(f"budget {budget:.3f} bits is below the lowest achievable average {lowest:.3f} "
                          f"(every layer at its lowest candidate bit-width)" if math.isfinite(budget)
                          else f"budget {budget} bits: give a finite number")
    if budget > highest + 1e-9:
        raise ConfigError(f"budget {budget:.3f} bits is above the highest achievable average {highest:.3f} "
                          f"(every layer at its highest candidate bit-width)")
    c = -np.array([choices[i].options[b] for i, b in cols])          # milp minimises
    one = lil_matrix((len(choices), len(cols)))
    for j, (i, _) in enumerate(cols):
        one[i, j] = 1
    # the budget row is scaled by 1/total so its tolerance is in bits, not in size units
    cap = np.array([[choices[i].size * b / total for i, b in cols]])
    with _quiet_stdout():
        res = milp(c, integrality=np.ones(len(cols)), bounds=Bounds(0, 1),
                   constraints=[LinearConstraint(one.tocsr(), 1, 1), LinearConstraint(cap, -np.inf, budget + 1e-9)],
                   options={"time_limit": time_limit, "mip_rel_gap": 1e-6})
    if res.x is None:
        raise ConfigError(f"the integer program found no solution at budget {budget} ({res.message})")
    out = [0] * len(choices)
    for j, (i, b) in enumerate(cols):
        if res.x[j] > 0.5:
            out[i] = b
    return out


# --------------------------------------------------------------------------- MixDQ's allocation
@dataclass
class Allocation:
    """The chosen bits (diffusers names) and a one-row summary of the candidate."""
    bits: dict[str, int]
    summary: dict = field(default_factory=dict)


def tie_groups(layers: Iterable[str], tie: str = "none") -> list[tuple[str, ...]]:
    """Layers forced to one bit-width: `none` (MixDQ: every layer alone) or `shared_input`
    (attn1 to_q/to_k/to_v and attn2 to_k/to_v, which read one input tensor)."""
    if tie not in _TIES:
        raise ConfigError(f"tie={tie!r}, expected one of {TIE_MODES}")
    pat, groups = _TIES[tie], {}
    for name in sorted(layers):
        m = pat.match(name) if pat else None
        key = (m.group(1) or m.group(2)) if m else name
        groups.setdefault(key, []).append(name)
    return [tuple(g) for g in groups.values()]


def protect_list(sens: Sensitivity, percent: float, at_bits: int = 8) -> list[str]:
    """MixDQ's activation protect list: in each metric group, the ceil(percent% of the group) layers
    with the worst score at `at_bits` (SSIM for content, SQNR for quality), most sensitive first.
    On MixDQ's SDXL-Turbo data, 1% gives its `act_sensitivie_a8_1%.pt` exactly (4 quality + 5 content)."""
    if not 0 <= percent <= 100:
        raise ConfigError(f"protect percent {percent} must be within 0..100")
    if at_bits not in sens.bits:
        raise ConfigError(f"protect list at {at_bits} bits: the sensitivity data has bits {sens.bits}")
    out = []
    for content in (False, True):  # MixDQ's order: quality layers first
        group = [n for n in sens.layers if is_content_layer(n) == content]
        k = math.ceil(percent / 100 * len(group) - 1e-9)
        out += sorted(group, key=lambda n: sens.score(n, at_bits))[:k]
    return out


def _normalised_options(sens: Sensitivity, layers: list[str], bits_for: dict[bool, tuple[int, ...]],
                        content_weight: float) -> dict[str, dict[int, float]]:
    """Per layer: bits -> weighted normalised score (0 at the group's top bits, group sum -1 at its lowest)."""
    out = {}
    for content, weight in ((True, content_weight), (False, 1.0 - content_weight)):
        group = [n for n in layers if is_content_layer(n) == content]
        cands = bits_for[content]
        drop = {n: {b: sens.score(n, max(cands)) - sens.score(n, b) for b in cands} for n in group}
        total = sum(max(d[min(cands)], 0.0) for d in drop.values()) or 1.0
        for n in group:
            out[n] = {b: -weight * drop[n][b] / total for b in cands}
    return out


def allocate(sens: Sensitivity, budget: float, content_weight: float = 0.5,
             bits_content: Iterable[int] | None = None, bits_quality: Iterable[int] | None = None,
             protect: Iterable[str] = (), tie: str = "none") -> Allocation:
    """Solve MixDQ's metric-decoupled program at one average-bit budget (protected layers excluded)."""
    if not 0.0 <= content_weight <= 1.0:
        raise ConfigError(f"content_weight={content_weight} must be within 0..1")
    bits_for = {}
    for content, asked, default in ((True, bits_content, CONTENT_BITS), (False, bits_quality, QUALITY_BITS)):
        if asked:
            missing = sorted(set(asked) - set(sens.bits))
            if missing:
                raise ConfigError(f"candidate {missing[0]} bits has no sensitivity score (the data has {sens.bits})")
        # defaults: MixDQ's candidates among the bit-widths that were measured
        bits_for[content] = tuple(sorted(asked or [b for b in default[sens.kind] if b in sens.bits]))
        if not bits_for[content]:
            raise ConfigError(f"no candidate bit-width for {'content' if content else 'quality'} layers among the "
                              f"measured {sens.bits}; pass --bits_{'content' if content else 'quality'}")
    protect = set(protect)
    unknown = sorted(protect - set(sens.layers))
    if unknown:
        raise ConfigError(f"protected layer '{unknown[0]}' is not in the sensitivity data")
    layers = [n for n in sens.layers if n not in protect]
    opts = _normalised_options(sens, layers, bits_for, content_weight)
    choices = []
    for group in tie_groups(layers, tie):
        allowed = set.intersection(*(set(opts[n]) for n in group))
        choices.append(Choice(group, sum(sens.sizes[n] for n in group),
                              {b: sum(opts[n][b] for n in group) for b in sorted(allowed)}))
    bits = {}
    for ch, b in zip(choices, solve_choices(choices, budget)):
        bits.update({n: b for n in ch.layers})
    return Allocation(bits, summarize(sens, bits, opts, budget_bits=budget, content_weight=content_weight,
                                      n_protected=len(protect), tie=tie))


def weighted_avg_bits(bits: dict[str, int], sizes: dict[str, float], layers: Iterable[str] | None = None) -> float:
    names = [n for n in (bits if layers is None else layers) if n in bits]
    total = sum(sizes[n] for n in names)
    return sum(sizes[n] * bits[n] for n in names) / total if total else float("nan")


def summarize(sens: Sensitivity, bits: dict[str, int], opts: dict[str, dict[int, float]] | None = None,
              **extra) -> dict:
    """Achieved average bits (overall and per group), weight bytes, layers per bit-width, normalised losses."""
    content = [n for n in bits if is_content_layer(n)]
    quality = [n for n in bits if not is_content_layer(n)]
    row = {**extra, "avg_bits": weighted_avg_bits(bits, sens.sizes),
           "avg_bits_content": weighted_avg_bits(bits, sens.sizes, content),
           "avg_bits_quality": weighted_avg_bits(bits, sens.sizes, quality), "n_layers": len(bits)}
    counts = Counter(bits.values())
    row.update({f"layers_{b}bit": counts.get(b, 0) for b in sorted(set(sens.bits) | set(counts))})
    row["qweight_mbytes"] = (sum(sens.sizes[n] * sens.unit_elems * b / 8 for n, b in bits.items()) / 1e6
                             if sens.kind == "weight" and sens.unit_elems else float("nan"))
    if opts is not None:  # the normalised drop per group: 0 = group at top bits, 1 = group at lowest bits
        cw = extra.get("content_weight", 0.5)
        for label, names, w in (("content", content, cw), ("quality", quality, 1 - cw)):
            row[f"{label}_loss"] = 0.0 - sum(opts[n][bits[n]] for n in names) / w if w > 0 else float("nan")
    return row


def agreement(ours: dict[str, int], ref: dict[str, int], sizes: dict[str, float]) -> dict[str, float]:
    """Fraction of the common layers (and of their size) given the same bit-width by both configs."""
    common = sorted(set(ours) & set(ref))
    if not common:
        raise ConfigError("the two bit configs share no layer names")
    same = [n for n in common if ours[n] == ref[n]]
    frac = lambda names: len([n for n in names if n in same]) / len(names) if names else float("nan")  # noqa: E731
    cont = [n for n in common if is_content_layer(n)]
    qual = [n for n in common if not is_content_layer(n)]
    return {"n_common": len(common), "agree_layers": len(same) / len(common),
            "agree_size": sum(sizes[n] for n in same) / sum(sizes[n] for n in common),
            "agree_layers_content": frac(cont), "agree_layers_quality": frac(qual)}


def config_name(kind: str, avg_bits: float, suffix: str = "") -> str:
    """MixDQ's file names: `weight_5.02.yaml`, `act_7.77.yaml` (achieved average, 2 decimals)."""
    return f"{kind}_{avg_bits:.2f}{suffix}.yaml"


def protect_name(percent: float) -> str:
    return f"act_sensitivie_a8_{percent:g}%.pt"  # (sic) MixDQ's spelling, so its scripts find the file
