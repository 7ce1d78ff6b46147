"""Count the GEMM and convolution work of one SDXL UNet step or one VAE decode: operations (2 x multiply-adds) per
Linear / Conv2d call, on meta tensors (no weights, no GPU, seconds on a CPU). With a measured profile this gives the
kernels' achieved throughput against the GPU's peak (report sections 1 and 5). Attention's own matmuls (inside SDPA)
are not counted.
    python scripts/utils/model_ops.py --part decoder --res 1024 --batch 4
    python scripts/utils/model_ops.py --part unet --res 512 --batch 1 --out logs/unet_ops.csv
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import HelpFormatter, positive_int, user_errors  # noqa: E402
from quant_utils.csvio import provenance, write_csv  # noqa: E402
from quant_utils.errors import ConfigError, reading  # noqa: E402

ARCH = "configs/stable-diffusion/sdxl_turbo_arch"
PARTS = {"decoder": f"{ARCH}/vae.json", "unet": f"{ARCH}/unet.json"}
TEXT_TOKENS = 77  # the text encoders' sequence length (cross-attention keys/values)


def _record(rows: list[dict], name: str):
    def hook(mod, _inp, out):
        if isinstance(mod, torch.nn.Linear):
            kind, cin, cout, taps = "linear", mod.in_features, mod.out_features, 1
        else:
            kind, cin, cout, taps = "conv", mod.in_channels // mod.groups, mod.out_channels, mod.kernel_size[0] * mod.kernel_size[1]
        rows.append({"module": name, "kind": kind, "in_features": cin, "out_features": cout, "taps": taps,
                     "out_shape": "x".join(map(str, out.shape)), "ops": 2 * out.numel() * cin * taps})
    return hook


def model_ops(part: str, config: dict, res: int, batch: int) -> pd.DataFrame:
    """One row per Linear/Conv2d call of one UNet step (`unet`, no classifier-free guidance) or one decode
    (`decoder`: post_quant_conv + decoder): module, kind, in/out features, taps (kernel positions), out_shape, ops."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    rows: list[dict] = []
    h = res // 8
    with torch.device("meta"):
        model = (UNet2DConditionModel if part == "unet" else AutoencoderKL).from_config(config).half()
    modules = model.named_modules() if part == "unet" else [("post_quant_conv", model.post_quant_conv),
                                                          *(("decoder." + n, m) for n, m in model.decoder.named_modules())]
    for name, mod in modules:
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            mod.register_forward_hook(_record(rows, name))
    meta = dict(device="meta", dtype=torch.half)
    with torch.no_grad():
        if part == "unet":
            cond = {"text_embeds": torch.empty(batch, config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"], **meta),
                    "time_ids": torch.empty(batch, 6, **meta)}
            model(torch.empty(batch, config["in_channels"], h, h, **meta), torch.tensor([999.0], device="meta"),
                  torch.empty(batch, TEXT_TOKENS, config["cross_attention_dim"], **meta), added_cond_kwargs=cond)
        else:
            model.decoder(model.post_quant_conv(torch.empty(batch, config["latent_channels"], h, h, **meta)))
    return pd.DataFrame(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--part", choices=list(PARTS), default="decoder", help="the model counted")
    p.add_argument("--config", default=None, help="its diffusers config JSON (default: the full-size SDXL-Turbo one)")
    p.add_argument("--res", type=positive_int, default=1024, help="image side, pixels (multiple of 8)")
    p.add_argument("--batch", type=positive_int, default=4, help="images per call")
    p.add_argument("--out", default=None, help="CSV of the per-call rows (optional)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    if args.res % 8:
        raise ConfigError(f"res {args.res}: expected a multiple of 8")
    path = repo_path(args.config or PARTS[args.part])
    need = "cross_attention_dim" if args.part == "unet" else "latent_channels"
    with reading(path, f"{args.part} config"):
        config = json.loads(path.read_text())
        if not isinstance(config, dict) or need not in config:
            raise ConfigError(f"{args.part} config {path}: not a diffusers {args.part} config (no {need})")
    df = model_ops(args.part, config, args.res, args.batch)
    parts = ", ".join(f"{(g['ops'].sum() / 1e12):.2f} TOP in {len(g)} {kind} calls" for kind, g in df.groupby("kind"))
    print(f"{args.part}, {args.batch} x {args.res} px: {df['ops'].sum() / 1e12:.2f} TOP ({parts}; "
          f"{df.loc[df['taps'] == 9, 'ops'].sum() / 1e12:.2f} TOP in the {(df['taps'] == 9).sum()} 3x3 convs)")
    if args.out:
        write_csv(df, repo_path(args.out), provenance(script="scripts/utils/model_ops.py", device="none (meta tensors)",
                                                      part=args.part, config=str(path), res=args.res, batch=args.batch))
        print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    with user_errors():
        sys.exit(main(parse_args()))
