"""Real low-bit kernels for QuantLayer's `kernel` backend (Triton; W8/W6/W4/W2 packed weights x int8 activations).

The contract with qlayers.py: `prepare(layer)` once when a model switches to the kernel backend,
`forward(layer, x)` for every call, `weight_bytes(layer)` for memory accounting. Modules:
packing (weight formats), reference (integer-exact torch math, the CPU fallback), triton_kernels (the
kernels and launchers), launch (tile configs, autotuning, parallel precompile), ops (torch custom ops),
backend (per-layer state and dispatch). This package knows nothing of diffusers.
"""
from .backend import FP16_CONVS, KernelState, Plan, forward, plan, prepare, reference_forward, unpacked_weight, weight_bytes

__all__ = ["FP16_CONVS", "KernelState", "Plan", "plan", "forward", "prepare", "reference_forward", "unpacked_weight", "weight_bytes"]
