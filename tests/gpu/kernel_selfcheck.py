"""Layer-level correctness checks of the kernel backend against the integer reference (CPU interpreter or GPU).

For each case a QuantLayer (qlayers.py, the contract partner) is built from a random nn.Linear/nn.Conv2d,
given random activation ranges, prepared for the kernel backend, and fed fresh random inputs; the kernel
output must match `reference_forward` (float64 integer math) to within fp16 rounding of the epilogue.
The CUDA caching allocator is poisoned with NaN before every call, so an output element the kernel never
writes shows up as NaN. Shared by tests/test_kernels.py (CPU) and tests/gpu/test_kernels_gpu.py;
`python tests/gpu/kernel_selfcheck.py [--all_configs]` runs the small cases (TRITON_INTERPRET=1 runs them on the CPU).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from quant_utils.kernels import backend, launch, packing  # noqa: E402
from quant_utils.kernels.tuning import current_tuning  # noqa: E402
from quant_utils.qlayers import QuantLayer  # noqa: E402


@dataclass(frozen=True)
class Case:
    kind: str                 # linear | conv
    n: int                    # out features / channels
    k: int                    # in features / channels
    w_bits: int | None
    a_bits: int | None
    rows: int = 64            # linear: tokens per sequence
    batch: int = 2
    hw: int = 8               # conv: input height = width
    ksize: int = 3
    stride: int = 1
    split: int | None = None
    bos: bool = False

    @property
    def name(self) -> str:
        extra = (f" split={self.split}" if self.split else "") + (" bos" if self.bos else "")
        geo = (f"[{self.batch}x{self.rows}x{self.k}]->{self.n}" if self.kind == "linear" else
               f"[{self.batch}x{self.k}x{self.hw}x{self.hw}] {self.ksize}x{self.ksize}/s{self.stride}->{self.n}")
        return f"{self.kind} {geo} W{self.w_bits}A{self.a_bits}{extra}"


def small_cases() -> list[Case]:
    """Small shapes for the CPU interpreter: every format, ragged tiles, split, BOS, stride 2, 1x1, protected."""
    cases = []
    for bits in (8, 6, 4, 2):
        cases.append(Case("linear", 80, 160, bits, 8, rows=37))
        cases.append(Case("conv", 40, 48, bits, 8, hw=6))
    cases += [Case("linear", 48, 64, 4, 8, rows=13, bos=True), Case("linear", 48, 96, 5, None, rows=9),
              Case("linear", 64, 64, 8, 4, rows=21), Case("conv", 24, 96, 6, 8, hw=5, split=64),
              Case("conv", 32, 80, 3, 8, hw=5, ksize=1, split=32), Case("conv", 16, 32, 8, 8, hw=7, stride=2),
              Case("conv", 16, 32, 4, None, hw=4), Case("linear", 32, 64, None, 8, rows=5),
              Case("linear", 48, 160, 8, 8, rows=300), Case("linear", 48, 160, 4, 8, rows=300),  # mid-size tiles
              Case("linear", 48, 160, 8, 8, rows=600), Case("linear", 40, 144, 4, 8, rows=700)]  # 'mid' tiles
    return cases


def build_layer(case: Case, device: str, seed: int, prepared: bool = True) -> QuantLayer:
    """A QuantLayer with random weights and random (plausible) activation ranges, prepared for the kernels (or, with
    prepared=False, left on the fake backend)."""
    g = torch.Generator().manual_seed(seed)
    if case.kind == "linear":
        orig = nn.Linear(case.k, case.n)
    else:
        orig = nn.Conv2d(case.k, case.n, case.ksize, case.stride, case.ksize // 2)
    with torch.no_grad():
        orig.weight.copy_(torch.randn(orig.weight.shape, generator=g) * 0.05)
        orig.bias.copy_(torch.randn(case.n, generator=g) * 0.1)
    layer = QuantLayer(orig.half(), case.w_bits, case.a_bits, w_method="minmax", split=case.split, bos=case.bos)
    for q in (layer.act_quant, layer.act_quant2):
        if q is not None:
            q.scale.fill_(float(torch.empty(1).uniform_(2.0, 6.0, generator=g)) / (1 << case.a_bits))
            q.zero_point.fill_(float(torch.randint(-(1 << (case.a_bits - 2)), 1 << (case.a_bits - 2), (1,), generator=g)))
    layer = layer.to(device)
    if prepared:
        layer.prepare_kernels()
    return layer


def rand_codes(shape: tuple, bits: int, seed: int = 0) -> torch.Tensor:
    """Random int8 codes of a `bits`-bit signed range (weights as packing stores them)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), shape, generator=g, dtype=torch.int8)


def make_input(case: Case, device: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    shape = (case.batch, case.rows, case.k) if case.kind == "linear" else (case.batch, case.k, case.hw, case.hw)
    return (torch.randn(shape, generator=g) * 1.5).half().to(device)


def poison(device: str) -> None:
    """Fill freed blocks of the CUDA caching allocator with NaN, so unwritten outputs read NaN."""
    if device.startswith("cuda"):
        free = torch.cuda.mem_get_info()[0]
        blob = torch.full((min(free // 4, 1 << 28),), float("nan"), device=device)
        del blob


def compare(y: torch.Tensor, ref: torch.Tensor) -> dict:
    """Errors of y against a float64 reference: in fp16 ulps of the reference, and relative L2."""
    y64, r64 = y.double().cpu(), ref.double().cpu()
    ulp = torch.exp2(torch.floor(torch.log2(r64.abs().clamp_min(2.0 ** -14))) - 10)
    err = (y64 - r64).abs()
    tol = ulp + 1e-6 * r64.abs().max()
    return {"nan": int(torch.isnan(y64).sum()), "max_ulp": float((err / ulp).max()),
            "within_tol": float((err <= tol).double().mean()),
            "rel_l2": float((y64 - r64).norm() / r64.norm().clamp_min(1e-30))}


def unet_cases() -> list[Case]:
    """A sample of the full-size SDXL UNet's real layer shapes (512 and 1024 px), for the GPU check."""
    L, C = "linear", "conv"
    return [Case(L, 5120, 640, 8, 8, rows=4096, batch=1), Case(L, 640, 2560, 8, 8, rows=1024, batch=1),
            Case(L, 1280, 1280, 8, 8, rows=256, batch=1), Case(L, 1280, 2048, 8, 8, rows=77, batch=2, bos=True),
            Case(L, 1280, 320, 8, 8, rows=1, batch=4), Case(L, 10240, 1280, 8, 8, rows=256, batch=1),
            Case(L, 1280, 5120, 8, 8, rows=1000, batch=1), Case(L, 1280, 2816, 8, 8, rows=1, batch=2),
            Case(L, 640, 2048, 8, None, rows=77, batch=1),
            Case(C, 320, 320, 8, 8, hw=64, batch=1), Case(C, 640, 320, 8, 8, hw=32, batch=1),
            Case(C, 1280, 2560, 8, 8, hw=16, batch=1, split=1280), Case(C, 1280, 2560, 8, 8, hw=16, ksize=1, split=1280),
            Case(C, 320, 960, 8, 8, hw=64, batch=1, split=640), Case(C, 640, 640, 8, 8, hw=64, stride=2, batch=1),
            Case(C, 1280, 1280, 8, 8, hw=32, batch=1)]


def with_bits(case: Case, w_bits: int) -> Case:
    return replace(case, w_bits=w_bits)


def candidates(case: Case) -> list[dict]:
    """The autotuner's candidate tile configs for this case's problem size."""
    bits = packing.storage_bits(case.w_bits) if case.w_bits is not None else 8
    if case.kind == "linear":
        return launch.linear_candidates(case.batch * case.rows, case.a_bits is None, bits)
    oh = (case.hw + 2 * (case.ksize // 2) - case.ksize) // case.stride + 1
    return launch.conv_candidates(case.batch * oh * oh, bool(case.split), bits)


def check_case(case: Case, device: str, seed: int = 0, cfg: dict | None = None) -> dict:
    """Kernel output vs the integer reference for one case (autotuned tile config, or `cfg`)."""
    layer = build_layer(case, device, seed)
    st = layer.kernel_state
    x = make_input(case, device, seed)
    ref = _reference(st, x)
    poison(device)
    try:
        with current_tuning().forced(cfg):
            y = backend.forward(st, x)
    except Exception as e:  # an opt-in config this Triton cannot build is skipped (as the autotuner skips it), not FAIL
        if not (cfg and launch.opt_in_kind(cfg) and does_not_build(e)):
            raise
        return {"case": case.name, "config": config_name(cfg), "path": st.path, "bits": st.bits,
                "group": st.fmt.group if st.fmt else None, "ok": True, "skipped": f"{type(e).__name__}: {str(e)[:120]}",
                "max_ulp": float("nan"), "within_tol": float("nan"), "rel_l2": float("nan"), "nan": 0}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    res = compare(y, ref)
    # exact paths: int GEMM epilogue (1 ulp); fp16-input paths accumulate in fp32 (relative error)
    exact = st.path == "int" and not st.bos
    ok = res["nan"] == 0 and tuple(y.shape) == tuple(ref.shape) and (
        res["within_tol"] == 1.0 if exact else res["rel_l2"] < 2e-3)
    return {"case": case.name, "config": config_name(cfg), "path": st.path, "bits": st.bits,
            "group": st.fmt.group if st.fmt else None, "ok": ok, **res}


def config_name(cfg: dict | None) -> str:
    return "autotuned" if cfg is None else f"{cfg['BM']}x{cfg['BN']}{' swap' if cfg.get('SWAP') else ''}" + (
        f" splitk{cfg['SPLIT_K']}" if cfg.get("SPLIT_K", 1) > 1 else "") + (" pre" if cfg.get("PRE") else "") + (
        " fixup" if cfg.get("FIXUP") else "")


def does_not_build(e: Exception) -> bool:
    """A Triton compile failure (front end, an MLIR pass, too much shared memory), not a wrong result or a fault."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    return isinstance(e, (CompilationError, OutOfResources)) or (isinstance(e, RuntimeError) and "PassManager" in str(e))


def _reference(st: backend.KernelState, x: torch.Tensor) -> torch.Tensor:
    """reference_forward in float64 (exact for the integer sums) on x's device, same input values."""
    return backend.reference_forward(st, x.double() if st.path != "fp16" else x.float())


def run(cases: list[Case], device: str, seed: int = 0, all_configs: bool = False) -> list[dict]:
    """Check each case with the autotuned config (and with every candidate config when `all_configs`)."""
    rows = []
    for i, c in enumerate(cases):
        rows.append(check_case(c, device, seed + i))
        if all_configs:
            rows += [check_case(c, device, seed + i, cfg) for cfg in candidates(c)]
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'case':<62} {'config':<22} {'path':<6} {'bits':>4} {'G':>4} {'max_ulp':>8} {'in_tol':>7} {'rel_l2':>9} "
             f"{'nan':>4}  ok"]
    for r in rows:
        lines.append(f"{r['case']:<62} {r['config']:<22} {r['path']:<6} {str(r['bits']):>4} {str(r['group']):>4} "
                     f"{r['max_ulp']:>8.3f} "
                     f"{r['within_tol']:>7.4f} {r['rel_l2']:>9.2e} {r['nan']:>4}  "
                     + (f"SKIP (does not build: {r['skipped']})" if r.get("skipped") else 'PASS' if r['ok'] else 'FAIL'))
    return "\n".join(lines)


def main() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = run(small_cases(), device, all_configs="--all_configs" in sys.argv)
    print(format_rows(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
