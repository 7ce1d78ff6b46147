"""VAE decode speed: eager vs CUDA graph vs torch.compile variants, with PSNR against the eager FP16 decode.

    python scripts/bench_vae.py --config configs/stable-diffusion/sdxl_turbo.yaml --random_weights \
        --res 512 768 1024 --out results/vae_decode_h100.csv

Every variant decodes the same latents; `psnr_db` compares its image with the eager decode.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import add_model_args, pipeline_from_args, user_errors, weights_label  # noqa: E402
from quant_utils.csvio import device_name, provenance, write_csv  # noqa: E402
from quant_utils.pipeline import ConfigError  # noqa: E402
from quant_utils.runtime import _GraphCache  # noqa: E402

VARIANTS = ("eager", "graph", "compile", "compile-max-autotune")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, resolution=False)
    p.add_argument("--res", type=int, nargs="+", default=[512, 768, 1024])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default="results/vae_decode.csv")
    return p.parse_args(argv)


def time_ms(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b))
    return out


def main(args) -> None:
    args.fp16 = True
    cfg, pipe, device = pipeline_from_args(args)
    if not device.startswith("cuda"):
        raise ConfigError("bench_vae times CUDA kernels: run it on a GPU")
    vae = pipe.vae

    def decode(z):
        return vae.decode(z / vae.config.scaling_factor).sample

    fns = {"eager": decode, "graph": decode,
           "compile": torch.compile(decode, dynamic=False),
           "compile-max-autotune": torch.compile(decode, dynamic=False, mode="max-autotune-no-cudagraphs")}
    rows = []
    for res in args.res:
        z = torch.randn(args.batch, 4, res // 8, res // 8, device=device, dtype=torch.float16,
                        generator=torch.Generator(device).manual_seed(0))
        with torch.no_grad():
            ref = decode(z).float()
            for name in args.variants:
                graphs = _GraphCache()
                run = (lambda f=fns[name]: f(z)) if name == "eager" else (lambda f=fns[name]: graphs.run(("vae",), f, [z]))
                import time
                t0 = time.perf_counter()
                out = run().float()  # first call: compile / capture
                first_s = time.perf_counter() - t0
                mse = (out - ref).pow(2).mean().item()
                psnr = float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)  # images in [-1, 1]: peak-to-peak 2
                t = time_ms(run, args.repeats)
                rows.append({"variant": name, "height": res, "width": res, "batch": args.batch,
                             "p50_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95)),
                             "first_call_s": round(first_s, 2), "psnr_db_vs_eager": psnr, "gpu": device_name(),
                             "weights": weights_label(cfg, args)})
                print(rows[-1])
    df = pd.DataFrame(rows)
    write_csv(df, repo_path(args.out), provenance(script="bench_vae", weights=weights_label(cfg, args), backend="none"))
    print(df.round(2).to_string(index=False))


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
