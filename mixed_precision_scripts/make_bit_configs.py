"""Generate the uniform bit configs and the tiny model's copies of MixDQ's configs from the architecture.

    python mixed_precision_scripts/make_bit_configs.py

Writes, for the real SDXL-Turbo UNet (794 layers: 743 Linear, 51 Conv2d) and the embedded tiny one:
  mixed_percision_config/<model>/final_config/weight/uniform_{8,6,4}.yaml
and for the tiny model, MixDQ's published configs (weight_*.yaml, act_*.yaml, the act protect list)
restricted to the tiny UNet's layers (every tiny layer name exists in the real UNet).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from quant_utils.bitconfig import WEIGHT_BITS, config_dir, read_bit_config, read_protect_list, write_bit_config  # noqa: E402
from quant_utils.cli import HelpFormatter, user_errors  # noqa: E402
from quant_utils.errors import ConfigError  # noqa: E402
from quant_utils.pipeline import build_unet_skeleton, load_model_config  # noqa: E402
from quant_utils.quantize import quantizable_layers  # noqa: E402

MODELS = {"sdxl_turbo": "configs/stable-diffusion/sdxl_turbo.yaml",
          "sdxl_turbo_tiny": "configs/stable-diffusion/sdxl_turbo_tiny.yaml"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--uniform_bits", type=int, nargs="+", default=[8, 6, 4], help="uniform weight configs to write")
    p.add_argument("--source_model", default="sdxl_turbo", choices=list(MODELS),
                   help="model whose shipped mixed configs are restricted")
    p.add_argument("--target_model", default="sdxl_turbo_tiny", choices=list(MODELS),
                   help="model that gets the restricted copies")
    args = p.parse_args(argv)
    bad = [b for b in args.uniform_bits if not WEIGHT_BITS[0] <= b <= WEIGHT_BITS[1]]
    if bad:
        p.error(f"--uniform_bits {bad[0]}: weight bits must be {WEIGHT_BITS[0]}..{WEIGHT_BITS[1]}")
    return args


def main(args) -> None:
    layers = {name: list(quantizable_layers(build_unet_skeleton(load_model_config(path)))) for name, path in MODELS.items()}
    keep = set(layers[args.target_model])
    missing = keep - set(layers[args.source_model])
    if missing:  # checked before anything is written
        raise ConfigError(f"{len(missing)} {args.target_model} layers are not in {args.source_model}, "
                          f"e.g. {sorted(missing)[0]}")
    # 1. uniform configs for every model
    for name, names in layers.items():
        for bits in args.uniform_bits:
            out = write_bit_config({n: bits for n in names}, config_dir(name, "weight") / f"uniform_{bits}.yaml")
            print(f"{out}: {len(names)} layers at {bits} bits")
    # 2. the target model's copies of the source model's mixed configs
    for kind in ("weight", "act"):
        for src in sorted(config_dir(args.source_model, kind).glob(f"{kind}_*.yaml")):
            sub = {k: v for k, v in read_bit_config(src).items() if k in keep}
            write_bit_config(sub, config_dir(args.target_model, kind) / src.name)
            print(f"{config_dir(args.target_model, kind) / src.name}: {len(sub)} layers")
    for src in sorted(config_dir(args.source_model, "act").glob("*.pt")):
        sub = [f"model.{n}" for n in read_protect_list(src) if n in keep]
        torch.save(sub, config_dir(args.target_model, "act") / src.name)
        print(f"{config_dir(args.target_model, 'act') / src.name}: {len(sub)} protected layers")


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
