"""GPU correctness of the kernel backend (issue 4, Correctness). Skipped without CUDA.

As a script it runs every check and writes a report (results/kernel_correctness.txt in the repo):
    python tests/gpu/test_kernels_gpu.py --out results/kernel_correctness.txt \
        [--tuning_in results/kernels_tuning_<gpu>.json]
1. small layers (every format, ragged tiles, split, BOS, stride 2, 1x1, protected) with every candidate tile config;
2. a sample of the full-size UNet's real layer shapes in W8/W6/W4/W2, with the autotuned configs;
   each against the integer reference in float64, fresh random inputs, the CUDA allocator poisoned with NaN
   before each call (an unwritten output element reads NaN), pass = within fp16 rounding of the epilogue;
3. the full-size random-weight UNet at 512x512, batch 1, per format: every layer's kernel output against the
   fake-quant path on the same captured input (< 1e-2 relative), and the whole UNet output kernel vs fake within
   max(1e-2, 2 x the noise floor measured in the same run: the fp16 fake path's own distance to a float32 fake run).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import kernel_selfcheck as selfcheck  # noqa: E402  (beside this file)
from quant_utils.kernel_bench import FORMATS as UNET_FORMATS  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL_UNET = 1e-2
FLOOR_MULT = 2.0


def layer_rows() -> list[dict]:
    rows = selfcheck.run(selfcheck.small_cases(), "cuda", all_configs=True)
    for bits in (8, 6, 4):
        rows += selfcheck.run([selfcheck.with_bits(c, bits) for c in selfcheck.unet_cases()], "cuda", seed=100 * bits)
    rows += selfcheck.run([selfcheck.with_bits(c, 2) for c in selfcheck.unet_cases()[::4]], "cuda", seed=7)
    return rows


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@torch.no_grad()
def unet_vs_fake(wbits: int, res: int = 512, batch: int = 1) -> dict:
    """Kernel vs fake backend on the full-size random UNet: per layer (same input) and on the output."""
    from quant_utils import kernel_bench as kb
    from quant_utils.pipeline import load_model_config
    from quant_utils.quantize import quant_layers, set_backend

    cfg = load_model_config(Path(__file__).resolve().parents[2] / "configs/stable-diffusion/sdxl_turbo.yaml")
    unet = kb.build_unet(cfg)
    kb.quantize_random(unet, wbits, 8, calib=kb.unet_inputs(unet, batch, res, seed=1))
    inp = kb.unet_inputs(unet, batch, res, seed=2)
    u32 = copy.deepcopy(unet).float()
    inp32 = {k: v.float() if torch.is_tensor(v) else {a: b.float() for a, b in v.items()} for k, v in inp.items()}
    fake32 = u32(**inp32).sample
    del u32
    captured: dict = {}

    def keep(name):  # forward hook storing a layer's first input and output
        def hook(mod, args, out):
            captured.setdefault(name, (args[0].clone(), out.clone()))
        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in quant_layers(unet)]
    fake16 = unet(**inp).sample
    for h in hooks:
        h.remove()
    set_backend(unet, "kernel")
    selfcheck.poison("cuda")
    kern16 = unet(**inp).sample
    per_layer = []
    for name, layer in quant_layers(unet):
        x, y_fake = captured[name]
        selfcheck.poison("cuda")
        y = layer(x)
        per_layer.append((rel(y, y_fake), name, layer.kernel_state.path, int(torch.isnan(y).sum())))
    per_layer.sort(reverse=True)
    out = {"whole_kernel_vs_fake16": rel(kern16, fake16), "whole_fake16_vs_fake32": rel(fake16, fake32),
           "whole_kernel_vs_fake32": rel(kern16, fake32), "nan": int(torch.isnan(kern16).sum()),
           "layers": len(per_layer), "layer_max": per_layer[0][0], "layer_median": per_layer[len(per_layer) // 2][0],
           "layer_nan": sum(p[3] for p in per_layer), "worst": per_layer[:5],
           "paths": dict(kb.kernel_paths(unet))}
    # The whole-network bar is the fp16 floor measured here: the fake path's own fp16-vs-fp32 distance (random
    # weights amplify any rounding to ~3e-2); the kernels must stay within FLOOR_MULT of it (a wrong kernel gives
    # O(1) or NaN), and every layer on the same input within TOL_UNET.
    out["tol_whole"] = max(TOL_UNET, FLOOR_MULT * out["whole_fake16_vs_fake32"])
    out["ok"] = (out["nan"] == 0 and out["layer_nan"] == 0 and out["layer_max"] < TOL_UNET
                 and out["whole_kernel_vs_fake16"] < out["tol_whole"])
    captured.clear()
    del unet
    torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------------------------- pytest


def test_small_layers_every_config():
    rows = selfcheck.run(selfcheck.small_cases(), "cuda", all_configs=True)
    assert all(r["ok"] for r in rows), selfcheck.format_rows([r for r in rows if not r["ok"]])


@pytest.mark.parametrize("workspace", ["warm", "first_in_capture"])
def test_fixup_split_k_replays_exactly_from_a_cuda_graph(workspace):
    """FIXUP split-K (kernels v5, opt-in) at a 512x1 UNet shape: equal to the one-slice GEMM eagerly and in every
    replay of a captured CUDA graph (its arrival counters reset themselves), also when its workspace is first
    needed inside the capture (then the graph owns zeroed buffers)."""
    from quant_utils.kernels import launch
    from quant_utils.kernels import triton_kernels as tk

    ks = selfcheck.build_layer(selfcheck.Case("linear", 1280, 1280, 8, 8, rows=256, batch=1), "cuda", 0).kernel_state
    q = torch.randint(-128, 128, (256, 1280), dtype=torch.int8, device="cuda")

    def run(cfg: dict) -> torch.Tensor:
        return tk.qlinear(q, ks.packed, ks.scale1, ks.zc1, ks.bias, ks.bits, ks.fmt.group, ks.n, cfg)

    ref = run(launch._cfg(64, 128, 4, 4, True))
    cfg = launch._fixup(64, 128, 4, 4, True, 4)
    assert torch.equal(run(cfg), ref)  # (also compiles the kernel outside the capture)
    if workspace == "first_in_capture":
        tk._FIXUP_WORKSPACE.clear()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run(cfg)
    for _ in range(3):
        out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, ref)
    assert torch.equal(run(cfg), ref)  # eager again after the graph


def test_unet_layer_shapes_w4():
    rows = selfcheck.run([selfcheck.with_bits(c, 4) for c in selfcheck.unet_cases()], "cuda", seed=3)
    assert all(r["ok"] for r in rows), selfcheck.format_rows([r for r in rows if not r["ok"]])


def test_whole_unet_w8a8_matches_fake():
    res = unet_vs_fake(8)
    assert res["ok"], res


# ----------------------------------------------------------------------------------------------- script


def main() -> int:
    from quant_utils.csvio import atomic_write_text, provenance
    from quant_utils.kernels.tuning import Tuning, use_tuning

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/kernel_correctness.txt", help="report file")
    p.add_argument("--tuning_in", default=None, help="tile configs tuned by bench_kernels.py on this GPU model")
    p.add_argument("--formats", default="W8A8,W4A8,W6A8", help="whole-UNet formats to check, in this order")
    p.add_argument("--time_budget_s", type=float, default=1e9, help="skip the remaining UNet formats after this")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    t0 = time.perf_counter()
    tuning = use_tuning(Tuning.standard(Path(__file__).resolve().parents[2] / "results"))
    if args.tuning_in and Path(args.tuning_in).is_file():
        tuning.load_files([Path(args.tuning_in)])
    import triton

    meta = provenance(script="tests/gpu/test_kernels_gpu.py", weights="random-full", triton=triton.__version__)
    lines = [f"# {k}: {v}" for k, v in meta.items()]
    rows = layer_rows()
    ok = all(r["ok"] for r in rows)
    lines += ["", f"## Layers vs the integer reference (float64): {sum(r['ok'] for r in rows)}/{len(rows)} pass",
              "max_ulp: largest error in fp16 ulps of the reference; in_tol: share within 1 ulp + 1e-6 max|ref| "
              "(int paths must be 1.0); fp16-input paths (BOS rows, protected, fp16 mode) pass on rel_l2 < 2e-3; "
              "nan: unwritten or non-finite outputs", "", selfcheck.format_rows(rows)]
    print("\n".join(lines[-(len(rows) + 2):]), flush=True)
    lines += ["", f"## Whole full-size random UNet, 512x512 batch 1: kernel backend vs fake backend (per layer < {TOL_UNET}; "
              f"whole output < max({TOL_UNET}, {FLOOR_MULT} x the fp16-vs-fp32 floor of the fake path)"]
    for fmt in [f for f in args.formats.split(",") if f]:
        if time.perf_counter() - t0 > args.time_budget_s:
            lines.append(f"{fmt}: skipped (time budget)")
            continue
        r = unet_vs_fake(UNET_FORMATS[fmt])
        ok &= r["ok"]
        lines += [f"{fmt}: {'PASS' if r['ok'] else 'FAIL'}  output rel err kernel vs fake16 {r['whole_kernel_vs_fake16']:.2e} "
                  f"(noise floor fake16 vs fake32 {r['whole_fake16_vs_fake32']:.2e}; kernel vs fake32 "
                  f"{r['whole_kernel_vs_fake32']:.2e}); per layer (same input) max {r['layer_max']:.2e} median "
                  f"{r['layer_median']:.2e} over {r['layers']} layers; NaN {r['nan'] + r['layer_nan']}; kernel paths {r['paths']}",
                  "  worst layers: " + "; ".join(f"{n} ({m}) {e:.2e}" for e, n, m, _ in r["worst"])]
        print("\n".join(lines[-2:]), flush=True)
    lines += ["", f"OVERALL: {'PASS' if ok else 'FAIL'} ({time.perf_counter() - t0:.0f}s)"]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(lines[-1])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
