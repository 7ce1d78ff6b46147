"""Real low-bit kernels for QuantLayer's `kernel` backend (Triton; W8/W6/W4/W2 packed weights x int8 activations),
and the per-channel moments kernel of quant_utils/norms.py's `triton` GroupNorm.

The contract with qlayers.py, one way: `prepare(layer)` returns the layer's KernelState (the layer owns it and frees
its own weights), `forward(state, x)` runs it, `weight_bytes(state)` counts it; `plan(LayerSpec)` says what prepare
would do from shapes and bits alone. Modules: packing (weight formats), reference (integer-exact torch math, the CPU
fallback), triton_kernels (the kernels and launchers), launch (tile configs, timing, parallel precompile),
tuning (the Tuning: the config per shape, its files), ops (torch custom ops), backend (per-layer state and dispatch). Of the project it imports only
csvio (tuning files are written atomically), and it knows nothing of diffusers or of QuantLayer's class.
"""
from .backend import KernelState, LayerSpec, Plan, forward, plan, prepare, reference_forward, unpacked_weight, weight_bytes

__all__ = ["KernelState", "LayerSpec", "Plan", "plan", "forward", "prepare", "reference_forward",
           "unpacked_weight", "weight_bytes"]
