"""Precision modes: the one table of mode names <-> (weight bits, activation bits), and the one parser of them.

A mode names a UNet precision:
- `fp16`: no quantization;
- `w<w>a<a>`: uniform bits, e.g. `w8a8` (BITS lists the ones the project quantizes, serves and benchmarks; a
  mixed-precision UNet is labelled by its averages, e.g. `w3.66a7.38`, see `name_for_bits`);
- `mixdq`: MixDQ's own mixed-precision configs (MIXDQ_CONFIG: weights 4.00 bits on average, activations 7.77,
  1% most sensitive activations FP16); its bits are not one number, so the serving study's modes leave it out.
A serving mode may add the image decoder after `+`: `w8a8+tiny`, `fp16+int8` (no suffix: the FP16 SDXL VAE).
Benchmark tables and flags spell a uniform mode upper-case (`W8A8`: `format_name`).
Torch-free: the performance model, the simulator and the service's front end import it.
"""
from __future__ import annotations

import math
import re

from .errors import ConfigError

FP16 = "fp16"
MIXDQ = "mixdq"
# the uniform modes: name -> (weight bits, activation bits); fp16 first, then fewer weight bits
BITS: dict[str, tuple[int, int]] = {"fp16": (16, 16), "w8a8": (8, 8), "w6a8": (6, 8), "w4a8": (4, 8)}
QUANTIZED = tuple(m for m in BITS if m != FP16)
# `mixdq`: bit-config files under the model's final_config/ folder
MIXDQ_CONFIG = {"config_weight_mp": "weight/weight_4.00.yaml", "config_act_mp": "act/act_7.77.yaml",
                "act_protect": "act/act_sensitivie_a8_1%.pt"}
MIXDQ_WBITS = 4.0  # weight_4.00.yaml's average

# Decoders a mode may name (quant_utils/decoders.py), and their quality order: lower = closer to the FP16 SDXL decode
DECODER_SEP = "+"
DECODER_QUALITY = {"fp16": 0, "int8": 1, "tiny": 2}
DECODERS = tuple(DECODER_QUALITY)
LEGACY_VAE_LABELS = ("compiled", "compiled-static", "eager")  # older latency CSVs' `vae` held the decode's exec

_BITS_NAME = re.compile(r"^w(\d+(?:\.\d+)?)a(\d+(?:\.\d+)?)$")


def split_mode(mode: str) -> tuple[str, str]:
    """'w8a8+tiny' -> ('w8a8', 'tiny'); 'w8a8' -> ('w8a8', 'fp16')."""
    unet, _, vae = mode.partition(DECODER_SEP)
    if vae and vae not in DECODER_QUALITY:
        raise ConfigError(f"mode {mode!r}: decoder {vae!r} is not one of {sorted(DECODER_QUALITY)}")
    return unet, vae or "fp16"


def mode_key(mode: str, vae: object = None) -> str:
    """The key of a UNet mode with a decoder (a latency CSV's `vae` column): 'w8a8' for the FP16 SDXL VAE."""
    if vae is None or (isinstance(vae, float) and math.isnan(vae)) or vae in ("", "fp16") or vae in LEGACY_VAE_LABELS:
        return mode
    return f"{mode}{DECODER_SEP}{vae}"


def mode_bits(mode: str) -> tuple[float, float | None]:
    """(weight bits, activation bits) of a mode name, decoder suffix allowed: fp16 -> (16, 16), w8a8+tiny -> (8, 8),
    w3.66a7.38 -> (3.66, 7.38), mixdq -> (4, None: mixed)."""
    unet, _ = split_mode(mode)
    if unet == FP16:
        return 16.0, 16.0
    if unet == MIXDQ:
        return MIXDQ_WBITS, None
    m = _BITS_NAME.match(unet)
    if m is None:
        raise ConfigError(f"mode {mode!r}: expected fp16, mixdq or w<bits>a<bits> (e.g. w8a8), optionally +int8 or +tiny")
    return float(m.group(1)), float(m.group(2))


def mode_wbits(mode: str) -> float:
    """Nominal weight bits of a mode name: fp16 -> 16, w8a8 -> 8, w4a8(+tiny) -> 4, mixdq (weight_4.00) -> 4."""
    return mode_bits(mode)[0]


def uniform_mode_bits(mode: str) -> tuple[int, int]:
    """(weight bits, activation bits) of one of the uniform modes (BITS); any other name is a ConfigError."""
    if mode not in BITS:
        raise ConfigError(f"mode {mode!r}: expected one of {sorted(BITS)}")
    return BITS[mode]


def wbits_mode(wbits: int) -> str:
    """The uniform mode of a weight bit-width (activations 8 bits): 16 -> fp16, 8 -> w8a8."""
    return FP16 if int(wbits) == 16 else f"w{int(wbits)}a8"


def name_for_bits(wbits: int | float, abits: int | float) -> str:
    """A precision as a mode name: uniform bits (ints) 'w4a8', averages (floats) 'w3.66a7.38', two decimals."""
    if isinstance(wbits, int) and isinstance(abits, int):
        return f"w{wbits}a{abits}"
    return f"w{wbits:.2f}a{abits:.2f}"


def format_name(mode: str) -> str:
    """How benchmark tables and flags spell a uniform quantized mode: 'w8a8' -> 'W8A8'."""
    uniform_mode_bits(mode)
    return mode.upper()

