"""GroupNorm + SiLU, PyTorch's GroupNorm against quant_utils/norms.py's forms (`--forms`: split, and triton, the split
form with per-channel statistics from a Triton kernel), all under torch.compile, at every GroupNorm input shape of
the SDXL UNet and VAE decoder at the given buckets.

The shapes come from one forward of each model built from the repo's architecture configs on the meta device (no
memory, no weights): every GroupNorm's input shape and how often it runs per image batch. Each distinct (shape,
groups, layout) is timed with random fp16 data (`--layouts`: contiguous NCHW, and channels_last as Inductor
lays out the decoder's conv outputs), CUDA-graph replays (launch.graph_bench_ms), compiled `silu(group_norm(x))`
as the resnets run it; every form's output is checked against the native one. Writes one row per (model, bucket,
shape, layout): calls, <form>_us, and per non-native form speedup_<form> (native / form), max_abs_diff_<form> and
gb_per_s_<form>; and the per-(model, bucket) totals (calls x us) as rows with shape "total" (one per layout). GPU only:

    python scripts/device/groupnorm_bench.py --out /tmp/out/groupnorm.csv --buckets 1024x4 1024x1 512x1
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from quant_utils.csvio import device_name, provenance, write_csv  # noqa: E402
from quant_utils.kernels.launch import graph_bench_ms  # noqa: E402
from quant_utils.norms import GROUP_NORM_FUNCTIONS, GROUP_NORMS, torch_moments, triton_moments  # noqa: E402
from quant_utils.pipeline import architecture_configs, load_model_config  # noqa: E402

DEVICE = "cuda"  # (a CPU test of this script sets "cpu" and stubs the timer)


def group_norm_shapes(model: nn.Module, run) -> Counter:
    """(input shape, groups) -> calls, over one `run()` of `model` (on the meta device)."""
    seen: Counter = Counter()
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.update([(tuple(args[0].shape), mod.num_groups)]))
             for m in model.modules() if isinstance(m, nn.GroupNorm)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def model_shapes(arch: dict, res: int, batch: int) -> dict[str, Counter]:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    strip = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
    u = arch["unet"]
    time_dim = 6 * u["addition_time_embed_dim"]  # SDXL's 6 time ids, each embedded; the rest is the pooled text
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(strip(u)).half()
        vae = AutoencoderKL.from_config(strip(arch["vae"])).half()
        z = torch.empty(batch, u["in_channels"], res // 8, res // 8, dtype=torch.float16)
        text = torch.empty(batch, 77, u["cross_attention_dim"], dtype=torch.float16)
        added = {"text_embeds": torch.empty(batch, u["projection_class_embeddings_input_dim"] - time_dim, dtype=torch.float16),
                 "time_ids": torch.empty(batch, 6, dtype=torch.float16)}
        t = torch.empty(batch)
        # the decoder first: its GroupNorms are the larger cost, and a timeout keeps the models already written
        return {"vae_decoder": group_norm_shapes(vae, lambda: vae.decode(z)),
                "unet": group_norm_shapes(unet, lambda: unet(z, t, encoder_hidden_states=text, added_cond_kwargs=added))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output CSV")
    p.add_argument("--buckets", nargs="+", default=["1024x4", "1024x1", "512x1"], help="RESxBATCH")
    p.add_argument("--layouts", nargs="+", default=["nchw", "nhwc"], choices=["nchw", "nhwc"],
                   help="memory layouts of the 4-D inputs (nhwc: channels_last)")
    p.add_argument("--forms", nargs="+", default=["triton", "triton-affine"], choices=[f for f in GROUP_NORMS if f != "native"],
                   help="GroupNorm forms timed against PyTorch's (native)")
    p.add_argument("--config", default="configs/stable-diffusion/sdxl_turbo.yaml")
    args = p.parse_args(argv)
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    arch = architecture_configs(load_model_config(ROOT / args.config))
    torch._dynamo.config.cache_size_limit = 256
    forms = {f: GROUP_NORM_FUNCTIONS[f] for f in ["native", *args.forms]}
    # (the default argument binds each form: a closure over the loop variable would time the last form only)
    compiled = {f: torch.compile(lambda x, g, w, b, gn=gn: F.silu(gn(x, g, w, b, 1e-6))) for f, gn in forms.items()}
    # the statistics alone (where the time goes): Inductor's per-channel var_mean against the Triton kernel
    moments = {"moments_torch": torch.compile(torch_moments)}
    if "triton" in forms:
        moments["moments_triton"] = triton_moments
    rows, timed = [], {}
    for bucket in args.buckets:
        res, batch = map(int, bucket.split("x"))
        for model, shapes in model_shapes(arch, res, batch).items():
            for (shape, groups), calls in sorted(shapes.items()):
                for layout in args.layouts if len(shape) == 4 else ["nchw"]:
                    key = (shape, groups, layout)
                    if key not in timed:
                        gen = torch.Generator(DEVICE).manual_seed(0)
                        x = torch.randn(shape, device=DEVICE, dtype=torch.float16, generator=gen) * 2 + 0.5
                        x = x.contiguous(memory_format=torch.channels_last if layout == "nhwc" else torch.contiguous_format)
                        w = torch.randn(shape[1], device=DEVICE, dtype=torch.float16, generator=gen)
                        b = torch.randn(shape[1], device=DEVICE, dtype=torch.float16, generator=gen)
                        with torch.no_grad():
                            ref = compiled["native"](x, groups, w, b).float()
                            timed[key] = ({f: (graph_bench_ms(lambda fn=fn: fn(x, groups, w, b)) * 1e3,
                                               (fn(x, groups, w, b).float() - ref).abs().max().item())
                                           for f, fn in compiled.items()},
                                          {f: graph_bench_ms(lambda fn=fn: fn(x)) * 1e3 for f, fn in moments.items()})
                        del x
                    gb = 2 * 2 * torch.Size(shape).numel() / 1e3  # one fp16 read + one write per element, GB/s per us
                    row = {"model": model, "res": res, "batch": batch, "shape": "x".join(map(str, shape)),
                           "layout": layout, "groups": groups, "calls": calls}
                    times, stats = timed[key]
                    n_us = times["native"][0]
                    for f, (us, diff) in times.items():
                        row[f"{f}_us"] = round(us, 1)
                        row[f"gb_per_s_{f}"] = round(gb / us, 1)
                        if f != "native":
                            row[f"speedup_{f}"], row[f"max_abs_diff_{f}"] = round(n_us / us, 3), diff
                    row.update({f"{f}_us": round(us, 1) for f, us in stats.items()})
                    rows.append(row)
                    print(rows[-1], flush=True)
            for layout in args.layouts:  # every call of this model and bucket at that layout (3-D inputs: nchw only)
                cell = [r for r in rows if (r["model"], r["res"], r["batch"]) == (model, res, batch)
                        and r["shape"] != "total" and (r["layout"] == layout or r["shape"].count("x") == 2)]
                tot = {f: sum(r["calls"] * r[f"{f}_us"] for r in cell) for f in compiled}
                rows.append({"model": model, "res": res, "batch": batch, "shape": "total", "layout": layout, "groups": 0,
                             "calls": sum(r["calls"] for r in cell), **{f"{f}_us": round(t, 1) for f, t in tot.items()},
                             **{f"speedup_{f}": round(tot["native"] / t, 3) for f, t in tot.items() if f != "native"}})
                print(rows[-1], flush=True)
            write_csv(pd.DataFrame(rows), Path(args.out), provenance(script="groupnorm_bench", gpu=device_name(),
                      weights="random fp16 tensors",
                      backend="torch.compile (Inductor); the triton form's statistics: the Triton moments kernel"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
