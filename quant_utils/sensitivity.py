"""Per-layer sensitivity: quantize one layer alone, generate, and score against the FP model.

MixDQ's metric-decoupled sensitivity analysis (Zhao et al., ECCV 2024). For each candidate
bit-width the UNet is quantized once (`quantize_unet` with that bit-width on every layer being
measured; activation ranges calibrated once), every layer's quantization is switched off, and
then each layer in turn is switched on alone while the pipeline generates a fixed set of
prompts and seeds. Two scores per (layer, bits), both higher-is-better:
- `sqnr`: SQNR (dB) of the UNet outputs against the FP UNet outputs (quality-related metric);
- `ssim`: mean SSIM of the images against the FP images (content-related metric).
With one denoising step (SDXL-Turbo's default) the UNet sees exactly the FP run's inputs, as in
MixDQ's fixed-input SQNR; with more steps later inputs carry the earlier steps' error.

Output, MixDQ's layout (read by `bit_allocation.load_sensitivity`):
    <out_dir>/<kind>/{sqnr,ssim}/sensitivity.yaml   `model.<layer>: [score at bits[0], bits[1], ...]`
    <out_dir>/<kind>/meta.yaml                      the bits and the measurement settings
    <out_dir>/tensor_ratio/<kind>_ratio_config.yaml relative sizes (weight numel / input numel per image)
    <out_dir>/<kind>/state.json                     every measurement so far: a rerun resumes from it
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from .bitconfig import PREFIX
from .csvio import atomic_write_text
from .evaluation import ssim
from .errors import ConfigError, reading
from .quantize import QuantSpec, quant_layers, quantizable_layers, quantize_unet, set_quant_state
from .runtime import Runner

SQNR_CAP_DB = 200.0   # an unchanged output would be +inf dB; capped so YAML and the ILP get a number
KINDS = ("weight", "act")


@dataclass(frozen=True)
class SensitivitySetup:
    """Everything a measurement depends on; a rerun with other settings cannot resume."""
    model: str
    kind: str
    bits: tuple[int, ...]
    prompts: tuple[str, ...]
    seed: int
    height: int
    width: int
    steps: int
    guidance_scale: float
    batch_size: int = 8
    calib_prompts: tuple[str, ...] = ()   # act only: activation-range calibration
    dtype: str = "float32"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"kind={self.kind!r}, expected one of {KINDS}")
        lo = 2 if self.kind == "weight" else 4
        if not self.bits or any(not lo <= b <= 8 for b in self.bits) or len(set(self.bits)) != len(self.bits):
            raise ConfigError(f"{self.kind} bits {self.bits}: expected distinct values in {lo}..8")
        if not self.prompts:
            raise ConfigError("sensitivity needs at least one prompt")
        if self.kind == "act" and not self.calib_prompts:
            raise ConfigError("activation sensitivity needs calibration prompts")

    def key(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def select_layers(names: list[str], pattern: str | None) -> list[str]:
    """Layers whose diffusers name matches `pattern` (re.search); all when None."""
    if not pattern:
        return list(names)
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"--layers {pattern!r}: not a valid regular expression ({e})") from e
    out = [n for n in names if rx.search(n)]
    if not out:
        raise ConfigError(f"--layers {pattern!r} matches none of the UNet's {len(names)} quantizable layers "
                          f"(e.g. {names[0]}, {names[len(names) // 2]})")
    return out


def sqnr_db(ref: list[torch.Tensor], out: list[torch.Tensor]) -> float:
    """10 log10(signal power / noise power) over all outputs together; capped at SQNR_CAP_DB."""
    sig = sum(float(r.double().pow(2).sum()) for r in ref)
    noise = sum(float((o.double() - r.double()).pow(2).sum()) for r, o in zip(ref, out))
    return SQNR_CAP_DB if noise == 0 else min(10 * math.log10(sig / noise), SQNR_CAP_DB)


class _Recorder:
    """Collects the UNet outputs (and, once, each layer's per-image input size) during generation."""

    def __init__(self, unet: nn.Module):
        self.outputs: list[torch.Tensor] = []
        self.handles = [unet.register_forward_hook(self._out)]

    def _out(self, _m, _inp, output):
        sample = output.sample if hasattr(output, "sample") else output[0]
        self.outputs.append(sample.detach().float().cpu())

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def generate(runner: Runner, setup: SensitivitySetup) -> tuple[np.ndarray, list[torch.Tensor]]:
    """Images (uint8, N x H x W x 3) and UNet outputs for the setup's prompts, seed + i per image."""
    rec = _Recorder(runner.pipe.unet)
    images = []
    try:
        for start in range(0, len(setup.prompts), setup.batch_size):
            batch = list(setup.prompts[start:start + setup.batch_size])
            images.append(runner(batch, [setup.seed + start + i for i in range(len(batch))], setup.height,
                                 setup.width, setup.steps, setup.guidance_scale))
    finally:
        rec.close()
    return np.concatenate(images), rec.outputs


def tensor_sizes(runner: Runner, setup: SensitivitySetup, layers: dict[str, nn.Module]) -> tuple[dict[str, float], dict[str, float]]:
    """Weight numel and input-activation numel per image of every layer (one FP forward pass)."""
    act: dict[str, float] = {}

    def hook(name):
        def fn(_m, inp):
            x = inp[0]
            act.setdefault(name, x.numel() / x.shape[0])
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        runner(list(setup.prompts[:1]), [setup.seed], setup.height, setup.width, 1, setup.guidance_scale)
    finally:
        for h in handles:
            h.remove()
    weight = {n: float(m.weight.numel()) for n, m in layers.items()}
    return weight, {n: act.get(n, 0.0) for n in layers}


def _ratio_yaml(sizes: dict[str, float]) -> tuple[dict[str, float], float]:
    """MixDQ's ratio configs: size / smallest size (so the smallest layer is 1.0)."""
    unit = min(v for v in sizes.values() if v > 0)
    return {PREFIX + n: v / unit for n, v in sorted(sizes.items()) if v > 0}, unit


class SensitivityLog:
    """The on-disk state: `state.json` (all scores so far) and the YAMLs derived from it."""

    def __init__(self, out_dir: Path, setup: SensitivitySetup, restart: bool = False):
        self.root, self.setup = Path(out_dir), setup
        self.dir = self.root / setup.kind
        self.state_path = self.dir / "state.json"
        self.scores: dict[str, dict[str, list]] = {}   # str(bits) -> layer -> [sqnr, ssim]
        if self.state_path.is_file() and not restart:
            with reading(self.state_path, "sensitivity state"):
                state = json.loads(self.state_path.read_text())
            if not isinstance(state, dict) or not isinstance(state.get("scores"), dict):
                raise ConfigError(f"{self.state_path} is damaged (no scores); pass --restart to start over")
            if state.get("setup") != setup.key():
                diff = sorted(k for k in setup.key() if state.get("setup", {}).get(k) != setup.key()[k])
                raise ConfigError(f"{self.state_path} was measured with other settings ({', '.join(diff)}); "
                                  f"pass --restart to start over or use another --out_dir")
            self.scores = state["scores"]
        elif not self.state_path.is_file() and (self.dir / "sqnr" / "sensitivity.yaml").is_file():
            raise ConfigError(f"{self.dir} holds sensitivity data this script did not write (no state.json), e.g. "
                              f"MixDQ's published data; pick another --out_dir")

    def done(self, bits: int, layer: str) -> bool:
        return layer in self.scores.get(str(bits), {})

    def record(self, bits: int, layer: str, sqnr: float, ssim_value: float) -> None:
        self.scores.setdefault(str(bits), {})[layer] = [sqnr, ssim_value]
        atomic_write_text(self.state_path, json.dumps({"setup": self.setup.key(), "scores": self.scores}))

    def complete_layers(self) -> list[str]:
        sets = [set(self.scores.get(str(b), {})) for b in self.setup.bits]
        return sorted(set.intersection(*sets)) if sets else []

    def write_yamls(self, weight_sizes: dict[str, float], act_sizes: dict[str, float]) -> list[str]:
        """sensitivity.yaml per metric for the layers measured at every bit-width, meta.yaml, ratio configs."""
        layers = self.complete_layers()
        for i, metric in enumerate(("sqnr", "ssim")):
            table = {PREFIX + n: [round(self.scores[str(b)][n][i], 6) for b in self.setup.bits] for n in layers}
            atomic_write_text(self.dir / metric / "sensitivity.yaml", yaml.safe_dump(table, sort_keys=True))
        meta = {"bits": list(self.setup.bits), "layers": len(layers), "metrics": {
            "sqnr": "dB of the UNet outputs vs FP, one layer quantized", "ssim": "mean image SSIM vs FP"},
            "setup": self.setup.key()}
        atomic_write_text(self.dir / "meta.yaml", yaml.safe_dump(meta, sort_keys=False))
        ratio_dir = self.root / "tensor_ratio"
        units = {}
        for kind, sizes in (("weight", weight_sizes), ("act", act_sizes)):
            ratios, units[f"{kind}_unit_elems"] = _ratio_yaml(sizes)
            atomic_write_text(ratio_dir / f"{kind}_ratio_config.yaml", yaml.safe_dump(ratios, sort_keys=True))
        units["note"] = (f"ratio = numel / unit; act = input elements per image at "
                         f"{self.setup.height}x{self.setup.width}")
        atomic_write_text(ratio_dir / "meta.yaml", yaml.safe_dump(units, sort_keys=False))
        return layers


def _restore(unet: nn.Module, originals: dict[str, nn.Module]) -> None:
    """Put the original Linear/Conv2d modules back (quantize_unet swaps them in place)."""
    for name, module in originals.items():
        parent, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent) if parent else unet, child, module)
    if hasattr(unet, "mixdq_spec"):
        del unet.mixdq_spec


def measure(pipe, setup: SensitivitySetup, layers: list[str], out_dir: str | Path, restart: bool = False,
            calibrate_fn: Callable | None = None) -> dict:
    """Measure (resuming from `out_dir`) every layer in `layers` at every bit-width; write the YAMLs.

    `pipe.unet` must be un-quantized; it is restored to its FP modules afterwards.
    Returns counts: measured now, reused from an earlier run, layers complete.
    """
    from .calibrate import calibrate

    calibrate_fn = calibrate_fn or calibrate
    unet = pipe.unet
    if any(True for _ in quant_layers(unet)):
        raise ConfigError("sensitivity analysis needs an un-quantized UNet")
    originals = quantizable_layers(unet)
    unknown = sorted(set(layers) - set(originals))
    if unknown:
        raise ConfigError(f"layer '{unknown[0]}' is not a quantizable layer of this UNet")
    log = SensitivityLog(Path(out_dir), setup, restart)
    runner = Runner(pipe)

    # 1. FP reference (and the tensor sizes for the ratio configs)
    weight_sizes, act_sizes = tensor_sizes(runner, setup, originals)
    ref_images, ref_out = generate(runner, setup)

    # 2. per bit-width: quantize the layers still to do once, then switch them on one at a time
    todo_total = sum(not log.done(b, n) for b in setup.bits for n in layers)
    counts = {"measured": 0, "reused": len(setup.bits) * len(layers) - todo_total}
    with tqdm(total=len(setup.bits) * len(layers), initial=counts["reused"], desc=f"{setup.kind} sensitivity",
              unit="case") as bar:
        for bits in setup.bits:
            todo = [n for n in layers if not log.done(bits, n)]
            if not todo:
                continue
            on = {n: bits for n in todo}
            spec = QuantSpec(weight_bits=on if setup.kind == "weight" else {},
                             act_bits=on if setup.kind == "act" else {})
            quantize_unet(unet, spec)
            try:
                if setup.kind == "act":
                    calibrate_fn(runner, list(setup.calib_prompts), setup.seed, setup.height, setup.width,
                                 setup.steps, setup.guidance_scale, setup.batch_size)
                set_quant_state(unet, weight=False, act=False)
                for name in todo:
                    layer = unet.get_submodule(name)
                    layer.use_wq, layer.use_aq = setup.kind == "weight", setup.kind == "act"
                    images, out = generate(runner, setup)
                    layer.use_wq = layer.use_aq = False
                    layer.drop_cached_weight()  # one layer's dequantized copy at a time is enough
                    score = float(np.mean([ssim(a, b) for a, b in zip(images, ref_images)]))
                    log.record(bits, name, sqnr_db(ref_out, out), score)
                    counts["measured"] += 1
                    bar.update(1)
            finally:
                _restore(unet, originals)
            log.write_yamls(weight_sizes, act_sizes)  # usable after each bit-width, not only at the end
    counts["complete"] = len(log.write_yamls(weight_sizes, act_sizes))
    return counts
