"""SASS of the int8 decoder's one-pass norm/SiLU/upsample/quantize kernel for a GPU this machine need not have.

Compiles `_norm_act_quant_kernel` (quant_utils/kernels/triton_kernels.py) offline with Triton's bundled ptxas for
sm_`--arch`, in the forms the fused decoder launches (a resnet's norm + SiLU, an upsampler's 2x + quantize), with the
tile and the specialisation the launcher uses on that GPU, and writes one row per form: form, arch, triton,
registers, local_bytes (spills: 0 expected), instructions (SASS, whole kernel), per_element (instructions / the
elements one thread handles), mufu_per_element (special-function unit: exp, rcp), vector_loads and vector_stores
(16-byte global loads / stores), narrow_memory_ops (global loads/stores of 1-2 bytes: the fp16 / int8 streams
unvectorised; 0 expected).
At ~15 bytes of HBM per SM per clock against ~128 issued instructions (H200), a pass of 1.5-3 bytes per element is
memory-bound only below ~12-25 instructions per element. Costs no GPU: the numbers are the compiler's, not timings.
    python scripts/utils/sass_report.py --out logs/sass_norm_act_quant.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd  # noqa: E402
import triton  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import HelpFormatter, user_errors  # noqa: E402
from quant_utils.csvio import provenance, write_csv  # noqa: E402
from quant_utils.kernels import triton_kernels as tk  # noqa: E402
from quant_utils.kernels.sass import compile_sass  # noqa: E402

SIGNATURE = dict(x_ptr="*fp16", scale_ptr="*fp32", shift_ptr="*fp32", q_ptr="*i8", C="i32", H="i32", W="i32",
                 PADN="i32", s_b="i32", s_c="i32", s_h="i32", s_w="i32", inv_s="fp32", z="i32", lo="fp32",
                 hi="fp32", UP="constexpr", HAS_AFFINE="constexpr", SILU="constexpr", PTX="constexpr",
                 BC="constexpr", BW="constexpr")
# what the decoder launches: channels_last input (s_c = 1, specialised by Triton's launcher as every argument equal
# to 1 is), channel counts and strides divisible by 16; the tile of norm_act_quant() for >= 128 channels
FORMS = {"resnet norm + silu": dict(UP=1, HAS_AFFINE=True, SILU=True),
         "upsampler 2x": dict(UP=2, HAS_AFFINE=False, SILU=False)}
BC, BW, NUM_WARPS = 128, 32, 4


def norm_act_quant_rows(arch: int, ptx: bool) -> list[dict]:
    rows = []
    for form, flags in FORMS.items():
        r = compile_sass(tk._norm_act_quant_kernel, SIGNATURE, dict(s_c=1, PTX=ptx, BC=BC, BW=BW, **flags),
                         ["x_ptr", "scale_ptr", "shift_ptr", "q_ptr", "C", "s_b", "s_h", "s_w"], arch, NUM_WARPS)
        per_thread = BC * BW // (32 * NUM_WARPS)
        narrow = sum(n for op, n in r.memory_ops.items() if op.startswith(("LDG", "STG")) and op.endswith((".U16", ".U8", ".S16", ".S8")))
        rows.append(dict(form=form, arch=f"sm_{arch}", triton=triton.__version__, ptx_math=ptx,
                         registers=r.registers, local_bytes=r.local_bytes, instructions=r.instructions,
                         per_element=round(r.instructions / per_thread, 2),
                         mufu_per_element=round(r.opcodes["MUFU"] / per_thread, 2),
                         vector_loads=sum(n for op, n in r.memory_ops.items() if op.startswith("LDG") and op.endswith(".128")),
                         vector_stores=sum(n for op, n in r.memory_ops.items() if op.startswith("STG") and op.endswith(".128")),
                         narrow_memory_ops=narrow))
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--arch", type=int, default=90, choices=(80, 86, 89, 90), help="compute capability as one number (90: H100/H200)")
    p.add_argument("--out", type=Path, default=repo_path("logs/sass_norm_act_quant.csv"), help="CSV to write")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    # both math forms: the CUDA one (PTX approximations) and the plain tl ops the interpreter runs
    df = pd.DataFrame(norm_act_quant_rows(args.arch, True) + norm_act_quant_rows(args.arch, False))
    write_csv(df, args.out, provenance(script="scripts/utils/sass_report.py",
                                       device=f"none (compiled offline for sm_{args.arch})"))
    print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    with user_errors():
        sys.exit(main(parse_args()))
