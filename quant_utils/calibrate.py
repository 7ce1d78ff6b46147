"""Activation calibration: run the real pipeline over calibration prompts and set static ranges.

Ranges are collected by the QuantLayers themselves (their `calibrating` state observes inputs)
while the whole pipeline runs at the scheduler's actual timesteps, with weights already
quantized, so each activation range sees the inputs it will get at inference.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn
from tqdm import tqdm

from .errors import ConfigError
from .quantize import quant_layers
from .runtime import Runner


@contextmanager
def observing(unet: nn.Module) -> Iterator[int]:
    """Inside: every activation quantizer records its inputs. On exit: ranges are set from them.

    Yields the number of layers being calibrated."""
    layers = [m for _, m in quant_layers(unet) if m.act_quant is not None]
    for m in layers:
        m.calibrating = True
    try:
        yield len(layers)
    finally:
        for m in layers:
            m.calibrating = False
    for m in layers:
        for q in (m.act_quant, m.act_quant2):
            if q is not None:
                q.finish_calibration()


def calibrate(runner: Runner, prompts: list[str], seed: int, height: int, width: int, steps: int = 1,
              guidance_scale: float = 0.0, batch_size: int = 4) -> int:
    """Calibrate every activation quantizer of runner.pipe.unet; returns the number calibrated."""
    if not prompts:
        raise ConfigError("calibration needs at least one prompt (--calib_num >= 1 and a non-empty --calib_prompts)")
    with observing(runner.pipe.unet) as n:
        if n:
            for start in tqdm(range(0, len(prompts), batch_size), desc="calibrating", unit="batch"):
                batch = prompts[start:start + batch_size]
                runner(batch, [seed + start + i for i in range(len(batch))], height, width, steps, guidance_scale)
    return n
