"""Bit configs: reading, validating and writing MixDQ's flat per-layer YAMLs and protect lists.

A bit config maps a UNet module name to a bit-width, one line per layer. MixDQ's files prefix
names with `model.` (its wrapper held the diffusers UNet as `.model`); both spellings are read,
and files are written in MixDQ's spelling so they stay interchangeable with the paper's.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable

import yaml

from . import repo_path
from .errors import ConfigError, reading

PREFIX = "model."
CONFIG_ROOT = "mixed_precision_scripts/mixed_percision_config"
WEIGHT_BITS = (2, 8)   # allowed range of weight bits
ACT_BITS = (4, 8)      # allowed range of activation bits


def normalize_name(name: str) -> str:
    """MixDQ's `model.down_blocks.0...` -> diffusers' `down_blocks.0...`."""
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def read_yaml_mapping(path: str | Path, what: str = "bit config") -> dict:
    """A non-empty YAML mapping, or a ConfigError that names the file and what is wrong."""
    p = repo_path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist")
    with reading(p, what):
        raw = yaml.safe_load(p.read_text())
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{what} {p}: expected a non-empty mapping 'layer_name: value', got {type(raw).__name__}")
    return raw


def read_bit_config(path: str | Path) -> dict[str, int]:
    """A flat `layer: bits` YAML; names normalised. Malformed files are errors naming the line's layer."""
    p = repo_path(path)
    raw = read_yaml_mapping(p)
    out: dict[str, int] = {}
    for name, bits in raw.items():
        if isinstance(bits, bool) or not isinstance(bits, int):
            raise ConfigError(f"bit config {p}: layer '{name}' has bits {bits!r}, expected an integer")
        key = normalize_name(str(name))
        if key in out:
            raise ConfigError(f"bit config {p}: layer '{key}' appears twice (with and without the '{PREFIX}' prefix?)")
        out[key] = bits
    return out


def write_bit_config(bits: dict[str, int], path: str | Path) -> Path:
    """Write in MixDQ's format (sorted, `model.`-prefixed), atomically."""
    from .csvio import atomic_write_text

    lines = "".join(f"{PREFIX}{normalize_name(k)}: {int(v)}\n" for k, v in sorted(bits.items()))
    atomic_write_text(repo_path(path), lines)
    return repo_path(path)


def load_plain_torch(path: str | Path, what: str):
    """torch.load with weights_only=True (tensors, lists, dicts, numbers: a crafted file cannot run code); a file
    holding other pickled objects is refused, saying so, and never loaded with weights_only=False."""
    import pickle

    import torch

    p = Path(path)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            raise ConfigError(f"{what} {p}: not a plain tensor/list file (it holds pickled Python objects, which could "
                              f"run code when loaded); it was not loaded, for safety") from None
        raise ConfigError(f"{what} {p}: not a readable torch file ({type(e).__name__})") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged files
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0]
        raise ConfigError(f"{what} {p}: not a readable torch file ({type(e).__name__}: {first[:120]})") from None


def _is_torch_file(p: Path) -> bool:
    """A torch.save zip archive or a raw pickle (protocol >= 2 starts with 0x80), whatever its name."""
    with reading(p, "act protect list"), open(p, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def read_protect_list(path: str | Path) -> list[str]:
    """Layers whose activations stay FP16: a torch-saved list (.pt, loaded weights_only), a YAML list or a text file."""
    p = repo_path(path)
    if not p.is_file():
        raise ConfigError(f"act protect list {p} does not exist")
    if p.suffix in (".pt", ".pth") or _is_torch_file(p):
        names = load_plain_torch(p, "act protect list")
    elif p.suffix in (".yaml", ".yml"):
        with reading(p, "act protect list"):
            names = yaml.safe_load(p.read_text())
    else:
        with reading(p, "act protect list"):
            names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"act protect list {p}: expected a list of layer names")
    return [normalize_name(n) for n in names]


def resolve_layer_bits(layers: Iterable[str], config: dict[str, int], kind: str, strict: bool = False,
                       default: int = 8, exempt: Iterable[str] = (), source: str = "") -> dict[str, int]:
    """Check a bit config against the model's layers and return bits for every layer.

    Unknown names and out-of-range bits are always errors (naming the layers). Layers the config
    leaves out are an error with `strict`, else they get `default` with a warning. `exempt` layers
    (e.g. act-protected ones) may be absent and are left out of the result.
    """
    layers, exempt = list(layers), set(exempt)
    lo, hi = WEIGHT_BITS if kind == "weight" else ACT_BITS
    where = f" in {source}" if source else ""
    unknown = sorted(set(config) - set(layers))
    if unknown:
        raise ConfigError(f"{len(unknown)} layer name(s){where} match no quantizable layer of this UNet: "
                          f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} "
                          f"(is this the config of another model? tiny-model configs live under {CONFIG_ROOT}/sdxl_turbo_tiny)")
    bad = {k: v for k, v in config.items() if not lo <= v <= hi}
    if bad:
        k, v = next(iter(bad.items()))
        raise ConfigError(f"layer '{k}'{where} has {kind} bits {v}; allowed {lo}..{hi} ({len(bad)} such layer(s))")
    missing = [n for n in layers if n not in config and n not in exempt]
    if missing:
        msg = (f"{len(missing)} layer(s) have no {kind} bits{where}: {', '.join(missing[:5])}"
               f"{' ...' if len(missing) > 5 else ''}")
        if strict:
            raise ConfigError(msg + " (pass --no-strict to default them to 8 bits)")
        warnings.warn(msg + f"; using {default} bits for them", stacklevel=2)
    return {n: config.get(n, default) for n in layers if n not in exempt}


def config_dir(model_name: str, kind: str) -> Path:
    return repo_path(CONFIG_ROOT) / model_name / "final_config" / kind


def weight_config_for_bits(model_name: str, wbits: int) -> Path:
    """`--wbits N`: MixDQ's mixed `weight_N.00.yaml` when it exists, else `uniform_N.yaml`."""
    lo, hi = WEIGHT_BITS
    if not lo <= wbits <= hi:
        raise ConfigError(f"--wbits {wbits}: weight bits must be {lo}..{hi}")
    d = config_dir(model_name, "weight")
    for cand in (d / f"weight_{wbits}.00.yaml", d / f"uniform_{wbits}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(f"no weight config for --wbits {wbits} in {d} (looked for weight_{wbits}.00.yaml and "
                      f"uniform_{wbits}.yaml; generate uniform ones with mixed_precision_scripts/make_bit_configs.py)")
