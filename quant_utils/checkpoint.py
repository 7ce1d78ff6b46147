"""ckpt.pth: every quantizer's parameters plus the bit configs that made them.

Integer weights are not stored: they follow deterministically from the FP weights and the stored
per-channel scales, so a checkpoint is small and loading skips the range search and calibration.
A checkpoint made with other bit configs, or for another model, is detected and reported.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .bitconfig import load_plain_torch
from .csvio import atomic_file
from .errors import ConfigError
from .quantize import QuantSpec, quant_layers, refuse_fused, unet_fingerprint

FORMAT = "mixdq-quant-params/1"
KEYS = ("format", "spec", "sources", "layers", "fingerprint")


def save_quant_params(unet: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write atomically (temp file + rename)."""
    refuse_fused(unet, "save the calibration of")
    spec: QuantSpec = unet.mixdq_spec
    layers = {}
    for name, m in quant_layers(unet):
        entry = {}
        if m.w_bits is not None:
            entry.update(w_scale=m.w_scale.cpu(), w_zero_point=m.w_zero_point.cpu())
        for key, q in (("a", m.act_quant), ("a2", m.act_quant2)):
            if q is not None:
                if not q.calibrated:
                    raise RuntimeError(f"layer {name}: activation quantizer not calibrated; calibrate before saving")
                entry.update({f"{key}_scale": q.scale.cpu(), f"{key}_zero_point": q.zero_point.cpu()})
        layers[name] = entry
    state = {"format": FORMAT, "spec": spec.to_dict(), "sources": spec.sources, "layers": layers,
             "fingerprint": unet_fingerprint(unet), **(extra or {})}
    path = Path(path)
    with atomic_file(path) as tmp:
        torch.save(state, tmp)
    return path


def _spec_diff(saved: dict, current: dict) -> list[str]:
    diffs = []
    for key in current:
        a, b = saved.get(key), current[key]
        if a == b:
            continue
        if isinstance(b, dict) and isinstance(a, dict):
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            diffs.append(f"{key}: {len(changed)} layer(s) differ, e.g. {changed[0]} "
                         f"(checkpoint {a.get(changed[0])}, now {b.get(changed[0])})")
        else:
            diffs.append(f"{key}: checkpoint {a if not isinstance(a, list) else f'{len(a)} layers'}, "
                         f"now {b if not isinstance(b, list) else f'{len(b)} layers'}")
    return diffs


def load_quant_params(unet: nn.Module, path: str | Path) -> dict:
    """Install a checkpoint's parameters into a UNet quantized with the same spec; returns its metadata."""
    path = Path(path)
    state = load_plain_torch(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"checkpoint {path} is not a {FORMAT} file")
    missing = [k for k in KEYS if k not in state]
    malformed = missing or [k for k, t in (("spec", dict), ("layers", dict), ("fingerprint", (int, float)))
                            if not isinstance(state[k], t)]
    if malformed:
        raise ConfigError(f"checkpoint {path} is damaged (missing or malformed: {malformed}); "
                          f"delete it to recalibrate")
    diffs = _spec_diff(state["spec"], unet.mixdq_spec.to_dict())
    if diffs:
        raise ConfigError(f"checkpoint {path} was made with other quantization settings:\n  - " + "\n  - ".join(diffs)
                          + "\n  delete it (or use another --base_path) to recalibrate with the current ones")
    fp = unet_fingerprint(unet)
    if abs(fp - state["fingerprint"]) > 1e-3 * max(abs(fp), 1e-6):
        raise ConfigError(f"checkpoint {path} was made for other model weights (fingerprint {state['fingerprint']:.6g}, "
                          f"this model {fp:.6g})")
    for name, m in quant_layers(unet):
        entry = state["layers"].get(name)
        if entry is None:
            raise ConfigError(f"checkpoint {path} has no entry for layer {name}")
        need = (["w_scale", "w_zero_point"] if m.w_bits is not None else []) + [
            f"{k}_{v}" for k, q in (("a", m.act_quant), ("a2", m.act_quant2)) if q is not None for v in ("scale", "zero_point")]
        absent = [k for k in need if not isinstance(entry, dict) or not isinstance(entry.get(k), torch.Tensor)]
        if absent:
            raise ConfigError(f"checkpoint {path} is damaged: layer {name} lacks {absent}; delete it to recalibrate")
        if m.w_bits is not None:
            m.set_weight_qparams(entry["w_scale"].to(m.w_scale.device), entry["w_zero_point"].to(m.w_scale.device))
        for key, q in (("a", m.act_quant), ("a2", m.act_quant2)):
            if q is not None:
                q.scale.copy_(entry[f"{key}_scale"])
                q.zero_point.copy_(entry[f"{key}_zero_point"])
                q.calibrated = True
    return {k: v for k, v in state.items() if k not in ("layers", "spec")}
