"""Rebuild the by-category GPU-time tables (`<stem>_profile_<gpu>.csv`) from their per-kernel siblings
(`<stem>_profile_kernels_<gpu>.csv`) with the current kernel categories (quant_utils/kernel_bench.KERNEL_CATEGORIES),
without a GPU. Provenance lines are kept, and a note says the categories were recomputed.
    python scripts/utils/recategorize_profiles.py results/*_profile_kernels_*.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd  # noqa: E402

from quant_utils.csvio import read_csv, read_provenance, write_csv  # noqa: E402
from quant_utils.kernel_bench import category_table  # noqa: E402

CELL = ["mode", "unet_exec", "vae", "res", "batch", "stage"]  # those present
NOTE = ("categories recomputed from the per-kernel rows of {src} by scripts/utils/recategorize_profiles.py: "
        "Inductor's fused kernels (names with convolution/qconv/qlinear) were filed under cuDNN before commit f83a0be")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("per_kernel", nargs="+", help="<stem>_profile_kernels_<gpu>.csv files")
    args = p.parse_args()
    for src in map(Path, args.per_kernel):
        dst = src.with_name(src.name.replace("_profile_kernels_", "_profile_"))
        kernels = read_csv(src)
        cells = [c for c in CELL if c in kernels.columns]
        table = pd.concat([category_table(g).assign(**dict(zip(cells, key)))
                           for key, g in kernels.groupby(cells, sort=False)])
        meta = read_provenance(dst) if dst.is_file() else read_provenance(src)
        meta["note_categories"] = NOTE.format(src=src.name)  # the run's own lines (commit, command) kept
        write_csv(table[cells + ["category", "gpu_ms", "share", "kernels"]], dst, meta)
        print(f"{dst}: {len(table)} rows from {src.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
