"""Count the SDXL VAE decoder's convolution work for one decode: operations (2 x multiply-adds) per conv, on meta
tensors (no weights, no GPU, seconds on a CPU). With a measured decode profile this gives the convs' achieved
throughput against the GPU's peak (report section 1).
    python scripts/utils/decoder_conv_ops.py --res 1024 --batch 4
    python scripts/utils/decoder_conv_ops.py --res 1024 --batch 4 --out logs/decoder_conv_ops.csv
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

VAE_CONFIG = "configs/stable-diffusion/sdxl_turbo_arch/vae.json"


def decoder_conv_ops(vae_config: dict, res: int, batch: int) -> pd.DataFrame:
    """One row per Conv2d call of post_quant_conv + decoder: name, in/out channels, kernel, output shape, ops."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(vae_config).half()
    rows = []

    def hook(name):
        def record(mod, _inp, out):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            rows.append({"conv": name, "in_channels": mod.in_channels, "out_channels": mod.out_channels, "kernel": k,
                         "out_shape": "x".join(map(str, out.shape)),
                         "ops": 2 * out.numel() * mod.in_channels // mod.groups * k})
        return record

    for name, mod in [("post_quant_conv", vae.post_quant_conv), *(("decoder." + n, m) for n, m in vae.decoder.named_modules())]:
        if isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(hook(name))
    z = torch.empty(batch, vae_config["latent_channels"], res // 8, res // 8, device="meta", dtype=torch.half)
    with torch.no_grad():
        vae.decoder(vae.post_quant_conv(z))
    return pd.DataFrame(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--vae_config", default=VAE_CONFIG, help="diffusers AutoencoderKL config JSON")
    p.add_argument("--res", type=positive_int, default=1024, help="image side, pixels (multiple of 8)")
    p.add_argument("--batch", type=positive_int, default=4, help="images per decode")
    p.add_argument("--out", default=None, help="CSV of the per-conv rows (optional)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    if args.res % 8:
        raise ConfigError(f"res {args.res}: expected a multiple of 8")
    path = repo_path(args.vae_config)
    with reading(path, "VAE config"):
        config = json.loads(path.read_text())
        if not isinstance(config, dict) or "block_out_channels" not in config:
            raise ConfigError(f"VAE config {path}: not a diffusers AutoencoderKL config (no block_out_channels)")
    df = decoder_conv_ops(config, args.res, args.batch)
    three = df["kernel"] == 9
    print(f"{len(df)} convs, {df['ops'].sum() / 1e12:.2f} TOP per decode of {args.batch} x {args.res} px "
          f"({df.loc[three, 'ops'].sum() / 1e12:.2f} TOP in the {three.sum()} 3x3 convs)")
    if args.out:
        write_csv(df, repo_path(args.out), provenance(script="scripts/utils/decoder_conv_ops.py", device="none (meta tensors)",
                                                      vae_config=args.vae_config, res=args.res, batch=args.batch))
        print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    with user_errors():
        sys.exit(main(parse_args()))
