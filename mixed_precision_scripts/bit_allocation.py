r"""Integer-program bit allocation from per-layer sensitivity (MixDQ's metric-decoupled search).

For every --target_bits budget and every --content_weight, solves one integer program (see
quant_utils/bit_allocation.py) and writes the bit config in MixDQ's format, plus a summary CSV
with one row per solved candidate. For activations it first picks the protect list (the top
--protect_percent % most sensitive layers, kept FP16) and leaves those out of the program.

Example (the committed real-model config, from MixDQ's published sensitivity data):
    .venv/bin/python mixed_precision_scripts/bit_allocation.py --kind weight --target_bits 6.0 \
        --out_dir mixed_precision_scripts/mixed_percision_config/sdxl_turbo/final_config/weight
"""
import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.bit_allocation import (KINDS, TIE_MODES, agreement, allocate, config_name,  # noqa: E402
                                        load_sensitivity, protect_list, protect_name, weighted_avg_bits)
from quant_utils.bitconfig import read_bit_config, read_yaml_mapping, write_bit_config  # noqa: E402
from quant_utils.cli import HelpFormatter, user_errors  # noqa: E402
from quant_utils.csvio import provenance, write_csv  # noqa: E402
from quant_utils.errors import ConfigError  # noqa: E402

DEFAULT_SENS = "mixed_precision_scripts/sensitivity_log/sdxl_turbo"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--sensitivity_dir", default=DEFAULT_SENS,
                   help="model folder holding <kind>/{sqnr,ssim}/sensitivity.yaml and tensor_ratio/ (default: real SDXL-Turbo, MixDQ's data)")
    p.add_argument("--kind", choices=KINDS, default="weight", help="allocate weight or activation bits")
    p.add_argument("--ratio_config", default=None,
                   help="per-layer size YAML (default: <sensitivity_dir>/tensor_ratio/<kind>_ratio_config.yaml)")
    p.add_argument("--target_bits", type=float, nargs="+", required=True,
                   help="average-bit budgets (size-weighted; for act: over the unprotected layers)")
    p.add_argument("--content_weight", type=float, nargs="+", default=[0.5],
                   help="weight of the content metric (SSIM) against the quality metric (SQNR), 0..1; several = several candidates")
    p.add_argument("--bits_content", type=int, nargs="+", default=None,
                   help="candidate bits of content layers (attn2/ff; default weight 2 4 8, act 4 8)")
    p.add_argument("--bits_quality", type=int, nargs="+", default=None, help="candidate bits of the other layers (default 4 8)")
    p.add_argument("--tie", choices=TIE_MODES, default="none",
                   help="none (MixDQ) or shared_input: attention projections reading one input share a bit-width")
    p.add_argument("--protect_percent", type=float, default=None,
                   help="act only: keep the top-k%% most sensitive layers of each metric group FP16 (default 1; 0 = none)")
    p.add_argument("--out_dir", default=None, help="where configs go (default logs/bit_allocation/<model>/<kind>)")
    p.add_argument("--summary_csv", default=None, help="one row per solved candidate (default <out_dir>/summary.csv)")
    p.add_argument("--compare_dir", default=None,
                   help="folder of reference configs (e.g. MixDQ's final_config/weight): <kind>_<budget>.yaml there is compared")
    p.add_argument("--overwrite", action="store_true", help="replace existing configs whose contents differ")
    args = p.parse_args(argv)
    bad = [b for b in args.target_bits if not math.isfinite(b) or b <= 0]
    if bad:
        p.error(f"--target_bits {bad[0]}: budgets must be finite numbers > 0")
    if args.kind == "weight" and args.protect_percent:
        p.error("--protect_percent applies to --kind act only")
    if args.protect_percent is None:
        args.protect_percent = 1.0 if args.kind == "act" else 0.0
    return args


def check_overwrite(bits: dict[str, int], path: Path, overwrite: bool) -> None:
    """Never silently replace a different config (e.g. one of MixDQ's shipped files)."""
    if path.is_file() and read_bit_config(path) != bits and not overwrite:
        raise ConfigError(f"{path} exists with other contents; pass --overwrite to replace it or pick another --out_dir")


def data_label(sensitivity_dir: str, kind: str) -> str:
    """Where the sensitivity scores came from, for the CSV's `data:` line (from <dir>/<kind>/meta.yaml)."""
    meta_path = repo_path(sensitivity_dir) / kind / "meta.yaml"
    meta = read_yaml_mapping(meta_path, "sensitivity meta file") if meta_path.is_file() else {}
    return str(meta.get("data") or meta.get("source") or f"sensitivity scores in {sensitivity_dir}")


def main(args: argparse.Namespace) -> pd.DataFrame:
    # 1. inputs: sensitivity scores, sizes, protect list
    sens = load_sensitivity(args.sensitivity_dir, args.kind, args.ratio_config)
    model = repo_path(args.sensitivity_dir).name
    out_dir = repo_path(args.out_dir or f"logs/bit_allocation/{model}/{args.kind}")
    protect = protect_list(sens, args.protect_percent) if args.kind == "act" and args.protect_percent > 0 else []

    # 2. one integer program per (budget, content weight), all solved before anything is written (a budget out of
    #    reach stops the run with no file behind); every candidate goes into the summary
    rows, written = [], {}
    suffix = len(args.content_weight) > 1
    for budget in args.target_bits:
        ref_path = repo_path(args.compare_dir) / config_name(args.kind, budget) if args.compare_dir else None
        ref = read_bit_config(ref_path) if ref_path and ref_path.is_file() else None
        for cw in args.content_weight:
            alloc = allocate(sens, budget, cw, args.bits_content, args.bits_quality, protect, args.tie)
            row = {"kind": args.kind, **alloc.summary}
            name = config_name(args.kind, row["avg_bits"], f"_cw{cw:.2f}" if suffix else "")
            if name in written and written[name] != alloc.bits:
                raise ConfigError(f"two candidates both average {row['avg_bits']:.2f} bits with different layers; "
                                  f"solve them in separate runs or --out_dir folders")
            check_overwrite(alloc.bits, out_dir / name, args.overwrite)
            written[name] = alloc.bits
            row["config"] = name
            if ref is not None:  # 3. agreement with a reference config at the same budget
                row.update(ref_config=ref_path.name, ref_avg_bits=weighted_avg_bits(ref, sens.sizes),
                           **agreement(alloc.bits, ref, sens.sizes))
            rows.append(row)

    # 4. the configs, the protect list, the summary CSV (a rerun on the same inputs leaves the files as they are)
    for name, bits in written.items():
        write_bit_config(bits, out_dir / name)
    if protect:
        import torch

        torch.save(["model." + n for n in protect], out_dir / protect_name(args.protect_percent))  # a plain list
    df = pd.DataFrame(rows).round(6)
    csv = repo_path(args.summary_csv) if args.summary_csv else out_dir / "summary.csv"
    write_csv(df, csv, provenance(script="bit_allocation.py", data=data_label(args.sensitivity_dir, args.kind),
                                  sensitivity_dir=args.sensitivity_dir, kind=args.kind,
                                  sizes=args.ratio_config or "tensor_ratio", protected=len(protect),
                                  solver="scipy.optimize.milp (HiGHS)"), keep_unchanged=True)
    cols = [c for c in ("budget_bits", "content_weight", "avg_bits", "avg_bits_content", "avg_bits_quality",
                        "layers_2bit", "layers_4bit", "layers_8bit", "agree_layers", "agree_size", "config") if c in df]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"configs in {out_dir}; summary {csv}" + (f"; protect list {protect_name(args.protect_percent)}" if protect else ""))
    return df


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
