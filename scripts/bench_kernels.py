"""Benchmark the low-bit kernels on a GPU: per-shape GEMM/conv timings and whole UNet steps (README: kernels).

Example (on a GPU, full-size SDXL-Turbo UNet with random weights):
    python scripts/bench_kernels.py --out_dir results      (default --out_dir: logs/kernels)
Quick look at one point:
    python scripts/bench_kernels.py --gemm_points 1024x4 --unet_points 1024x4 --formats W8A8

Writes <out_dir>/kernels_<gpu>.csv (per layer shape: fp16 cuBLAS/cuDNN, torch._int_mm, W8A8/W6A8/W4A8, us and
TOPS), <out_dir>/kernels_unet_<gpu>.csv (UNet step: FP16 vs the kernel backend, each under CUDA graphs and/or
with compiled blocks (`--unet_exec graph,compile`), p50/p95 ms, speedups, weight bytes, peak memory),
<out_dir>/kernels_profile_<gpu>.csv (one step's GPU time by kernel category) and
<out_dir>/kernels_tuning_<gpu>.json (the autotuned tile configs).
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import HelpFormatter, model_config_from_args, user_errors  # noqa: E402
from quant_utils.csvio import provenance, write_csv  # noqa: E402
from quant_utils.latency import device_weight_bytes  # noqa: E402
from quant_utils.errors import ConfigError  # noqa: E402
from quant_utils.runtime import COMPILE_REGION_CHOICES  # noqa: E402


def _points(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(v) for v in p.split("x")) for p in text.split(",") if p]
    except ValueError:
        raise ConfigError(f"points must look like 512x1,1024x4 (resolution x batch), got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", default="configs/stable-diffusion/sdxl_turbo.yaml",
                   help="model config whose full-size UNet architecture is benchmarked (random weights)")
    p.add_argument("--out_dir", default="logs/kernels", help="where the CSVs and the tuning JSON go")
    p.add_argument("--gemm_points", default="512x1,1024x4", help="resolution x batch points of the per-shape table")
    p.add_argument("--unet_points", default="1024x4,512x1,768x4,1024x1,512x4,768x1",
                   help="resolution x batch points of the UNet-step table (in this order)")
    p.add_argument("--formats", default="W8A8,W4A8,W6A8", help="kernel formats, in this order")
    p.add_argument("--iters", type=int, default=50, help="timed CUDA-graph replays per UNet point")
    p.add_argument("--profile_points", default="1024x4,512x1",
                   help="UNet points whose step is also profiled by kernel category (kernels_profile_<gpu>.csv)")
    p.add_argument("--fp16_convs", default="none", choices=["auto", "none"],
                   help="none: every eligible conv runs the int8 kernel; auto: convs whose int8 kernel (with its "
                        "quantize pass) was slower than cuDNN in the per-shape table stay on cuDNN fp16 in the UNet "
                        "step (they then pay a fake-quant pass of their input)")
    p.add_argument("--unet_exec", default="graph",
                   help="comma list of graph, compile: UNet steps as CUDA-graph replays of eager PyTorch, and/or of "
                        "steps whose resnet/transformer blocks are torch.compile'd (runtime.compile_unet_regions: Inductor "
                        "fuses norms, elementwise ops and the activation quantization into their producers); every "
                        "variant runs each in this order, the FP16 CUDA-graph step is the `speedup` baseline")
    p.add_argument("--compile_regions", default="auto", choices=list(COMPILE_REGION_CHOICES),
                   help="with compile: what is compiled one by one (runtime.compile_unet_regions); auto = as the "
                        "serving Runner: blocks for the quantized UNets, transformers for FP16")
    p.add_argument("--fuse_qkv", default="auto", choices=["auto", "off"],
                   help="with compile: auto = attention projections fused first where exactly fusable, as the "
                        "serving Runner's compiled UNets (quant_utils/fusion.py); off = unfused")
    p.add_argument("--tuning_in", default=None, help="JSON of tile configs tuned earlier on this GPU model (skips timing)")
    p.add_argument("--no_precompile", action="store_true", help="compile kernels lazily instead of in parallel first")
    p.add_argument("--time_budget_s", type=float, default=1e9,
                   help="stop starting new UNet points after this many seconds (what ran is written)")
    args = p.parse_args(argv)
    args.gemm_points, args.unet_points = _points(args.gemm_points), _points(args.unet_points)
    args.profile_points = _points(args.profile_points)
    args.formats = [f for f in args.formats.split(",") if f]
    execs = [e for e in args.unet_exec.split(",") if e]
    if not execs or set(execs) - {"graph", "compile"}:
        raise ConfigError(f"--unet_exec takes graph and/or compile, got {args.unet_exec!r}")
    args.unet_exec = [e for e in ("graph", "compile") if e in execs]  # graph first: compiling changes the model
    return args


def main(args: argparse.Namespace) -> None:
    import torch

    from quant_utils import kernel_bench as kb
    from quant_utils.kernels.tuning import gpu_tag

    if not torch.cuda.is_available():  # first, before anything is built or compiled
        raise ConfigError("bench_kernels.py needs a CUDA GPU")
    unknown = [f for f in args.formats if f not in kb.FORMATS]
    if unknown:
        raise ConfigError(f"unknown formats {unknown}; choose from {list(kb.FORMATS)}")
    run = Run(args, model_config_from_args(args), torch.cuda.get_device_name(0), gpu_tag(), repo_path(args.out_dir),
              time.perf_counter(), install_tuning(args))
    run.out_dir.mkdir(parents=True, exist_ok=True)
    # 1. FP16 UNet: the layer calls of every point (shapes and counts per step)
    with kb.timed("fp16 UNet, layer shapes"):
        unet = kb.build_unet(run.cfg)
        splits, calls = layer_calls(unet, args)
        fp16_bytes = device_weight_bytes(unet)
    # 2. compile every kernel variant the formats may try, in parallel
    if not args.no_precompile:
        with kb.timed("precompile"):
            precompile(calls, splits, [kb.FORMATS[f] for f in args.formats])
    # 3. per-shape table: each distinct layer geometry of a point once, with its calls per step
    with kb.timed("per-shape table"):
        shape_rows = per_shape_table(run, calls, splits)
    # 4. which convs stay fp16: the int8 kernel with its quantize pass lost to cuDNN (time summed over the points)
    fp16_convs = frozenset()
    if args.fp16_convs == "auto" and shape_rows:
        fp16_convs = frozenset(_slower_convs(pd.DataFrame(shape_rows), args.formats[0]))
        print(f"[bench] convs kept on cuDNN fp16 (C_in, C_out, k, stride): {sorted(fp16_convs)}")
    # 5. UNet steps (CUDA graphs), and where one step's GPU time goes (profiler) at the profile points
    steps = StepTable(run, fp16_bytes, fp16_convs)
    with kb.timed("fp16 UNet steps"):
        steps.measure("fp16", unet, fp16_bytes, "")
    del unet
    _free()
    for fmt in args.formats:
        with kb.timed(f"{fmt} UNet steps"):
            steps.measure_format(fmt)
        run.tuning.save(run.out_dir / f"kernels_tuning_{run.tag}.json")
    # 6. print
    print(f"[bench] wrote {steps.unet_csv} ({time.perf_counter() - run.t_start:.0f}s)")
    steps.print_tables()


class Run(NamedTuple):
    """What every step of a run shares."""
    args: argparse.Namespace
    cfg: object                 # the model config
    gpu: str
    tag: str                    # file-name form of the GPU's name
    out_dir: Path
    t_start: float
    tuning: object              # quant_utils.kernels.tuning.Tuning, installed for the launches

    def meta(self, **kw) -> dict:
        return provenance(script="bench_kernels", weights="random-full", gpu=self.gpu,
                          backend="kernel (W*A8 rows); none (fp16 cuBLAS/cuDNN rows)", **kw)

    def out_of_time(self) -> bool:
        return time.perf_counter() - self.t_start > self.args.time_budget_s


def install_tuning(args: argparse.Namespace):
    """The run's Tuning: with --tuning_in, the standard files then that file (it wins); else only this user's cache,
    so this run's timings make the tuning file it writes, not a committed one."""
    from quant_utils.kernels.tuning import Tuning, use_tuning

    tuning = Tuning.standard(repo_path("results"), committed=bool(args.tuning_in))
    if args.tuning_in:
        tuning.load_files([repo_path(args.tuning_in)])
    return use_tuning(tuning)


def layer_calls(unet, args: argparse.Namespace) -> tuple[dict, dict]:
    """(skip-split points, {point: Counter of the UNet's layer calls in one step at that point})."""
    from quant_utils import kernel_bench as kb
    from quant_utils.quantize import skip_split_points

    calls = {pt: kb.record_layer_calls(unet, kb.unet_inputs(unet, pt[1], pt[0]))
             for pt in dict.fromkeys(args.gemm_points + args.unet_points)}
    return skip_split_points(unet), calls


def precompile(calls: dict, splits: dict, wbits: list[int]) -> None:
    from quant_utils import kernel_bench as kb
    from quant_utils.kernels import launch

    jobs = kb.precompile_jobs(sorted({c for cs in calls.values() for c in cs}, key=str), wbits, splits)
    res = launch.precompile(jobs)
    bad = [f"{j}: {r}" for j, r in res.items() if not r.startswith("ok")]
    print(f"[bench] {len(res)} variants, {len(bad)} failed" + "".join(f"\n  {b}" for b in bad[:20]))


def per_shape_table(run: Run, calls: dict, splits: dict) -> list[dict]:
    """Rows of kernels_<gpu>.csv (written unless empty: no --gemm_points leaves an existing table alone)."""
    from quant_utils import kernel_bench as kb

    rows = []
    for res, batch in run.args.gemm_points:
        for key, (n_calls, c) in kb.distinct_shapes(calls[(res, batch)], splits).items():
            if c.kind == "linear":
                m, k, n = key[1:]
                shape_rows, geo = kb.linear_shape_rows(m, k, n), f"{m}x{k}x{n}"
                c_in, ksize, stride = k, 1, 1
            else:
                _, x_shape, w_shape, stride, split = key
                c_in, ksize = x_shape[1], w_shape[2]
                shape_rows = kb.conv_shape_rows(x_shape, w_shape[0], ksize, stride, c.padding, split)
                geo = (f"{'x'.join(map(str, x_shape))} k{ksize} s{stride} -> {w_shape[0]}"
                       + (f" split {split}" if split else ""))
            base = shape_rows[0]["us"]
            for r in shape_rows:
                rows.append(dict(kind=c.kind, res=res, batch=batch, shape=geo, c_in=c_in, c_out=c.weight_shape[0],
                                 ksize=ksize, stride=stride, calls_per_step=n_calls, example_layer=c.name,
                                 impl=r["impl"], us=round(r["us"], 2), tops=round(r["tops"], 1),
                                 speedup_vs_fp16=round(base / r["us"], 3), config=r["config"]))
    if rows:
        path = run.out_dir / f"kernels_{run.tag}.csv"
        write_csv(pd.DataFrame(rows), path, run.meta(part="per-shape", timing="CUDA-graph replays, median"))
        print(f"[bench] wrote {path}")
    return rows


EXEC_LABELS = {"graph": "CUDA graph", "compile": "compiled blocks + CUDA graph"}


class StepTable:
    """The UNet-step rows (kernels_unet_<gpu>.csv) and profile rows (kernels_profile_<gpu>.csv) of a run, rewritten
    after every point, so a run stopped by a timeout keeps what it measured."""

    def __init__(self, run: Run, fp16_bytes: int, fp16_convs: frozenset):
        self.run, self.fp16_bytes, self.fp16_convs = run, fp16_bytes, fp16_convs
        self.unet_rows: list[dict] = []
        self.prof_rows: list[dict] = []
        self.base_ms: dict[tuple, float] = {}   # (exec, res, batch) -> the FP16 step's median ms
        self.graph_out: dict[tuple, object] = {}  # (res, batch) -> the CUDA-graph step's output of the variant
        self.form = dict(compile_regions="", fused_attentions=0)  # the compiled form of the model being measured
        self.unet_csv = run.out_dir / f"kernels_unet_{run.tag}.csv"
        self.prof_csv = run.out_dir / f"kernels_profile_{run.tag}.csv"

    def measure_format(self, fmt: str) -> None:
        """A random full-size UNet quantized to `fmt` on the kernel backend, measured like the FP16 one."""
        from quant_utils import kernel_bench as kb
        from quant_utils.quantize import set_backend

        unet = kb.build_unet(self.run.cfg)
        kb.quantize_random(unet, kb.FORMATS[fmt], 8, calib=kb.unet_inputs(unet, 1, 512, seed=1))
        set_backend(unet, "kernel", fp16_convs=self.fp16_convs)
        _free()
        self.measure(f"{fmt} kernel", unet, device_weight_bytes(unet), str(dict(kb.kernel_paths(unet))))
        del unet
        _free()

    def measure(self, name: str, model, wbytes: int, paths: str) -> None:
        """Every --unet_exec (graph first: compiling changes the model) at every --unet_points point."""
        from quant_utils.fusion import fuse_qkv, fused_attentions
        from quant_utils.runtime import compile_unet_regions, resolve_regions

        self.graph_out = {}
        for ex in self.run.args.unet_exec:
            self.form = dict(compile_regions="", fused_attentions=0)
            if ex == "compile":
                if self.run.args.fuse_qkv == "auto":
                    fuse_qkv(model)
                regions = resolve_regions(self.run.args.compile_regions, model)
                compile_unet_regions(model, regions)
                self.form = dict(compile_regions=regions, fused_attentions=fused_attentions(model))
            for res, batch in self.run.args.unet_points:
                self.point(name, model, ex, res, batch, wbytes, paths)

    def point(self, name: str, model, ex: str, res: int, batch: int, wbytes: int, paths: str) -> None:
        import torch

        from quant_utils import kernel_bench as kb

        label, args = f"{name} ({EXEC_LABELS[ex]})", self.run.args
        if self.run.out_of_time():
            print(f"[bench] time budget reached: skipping {label} {res}x{batch}")
            return
        inputs = kb.unet_inputs(model, batch, res)
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                out = kb.step_fn(model, inputs)().float()  # first call: compile, autotune, cuDNN plans
            torch.cuda.synchronize()
        except Exception as e:  # reported and skipped: the other points and variants still run
            print(f"[bench] {label} {res}x{batch} FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
            return
        first_s = time.perf_counter() - t0
        # the compiled step must compute what the uncompiled one did (same model, same inputs)
        if ex == "graph":
            self.graph_out[(res, batch)] = out
        ref = self.graph_out.get((res, batch)) if ex == "compile" else None
        rel = float((out - ref).norm() / ref.norm()) if ref is not None else None
        t, peak = kb.graph_times(kb.step_fn(model, inputs), args.iters)
        if name == "fp16":
            self.base_ms[(ex, res, batch)] = float(pd.Series(t).median())
        self.unet_rows.append(dict(_unet_row(label, ex, res, batch, t, self.base_ms, wbytes, self.fp16_bytes, peak,
                                             paths, first_s), **self.form, rel_err_vs_graph=rel))
        print(self.unet_rows[-1], flush=True)
        if (res, batch) in args.profile_points:
            self.prof_rows.extend(dict(variant=label, res=res, batch=batch, **r)
                                  for r in kb.profile_step(kb.step_fn(model, inputs)))
        self.write()

    def write(self) -> None:
        write_csv(pd.DataFrame(self.unet_rows), self.unet_csv,
                  self.run.meta(part="unet-step", timing="CUDA graph replay, CUDA events", iters=self.run.args.iters,
                                fp16_convs=sorted(self.fp16_convs)))
        if self.prof_rows:
            write_csv(pd.DataFrame(self.prof_rows), self.prof_csv,
                      self.run.meta(part="profile", timing="torch.profiler, one step outside the CUDA graph"))

    def print_tables(self) -> None:
        if self.unet_rows:
            print(pd.DataFrame(self.unet_rows)[["variant", "res", "batch", "p50_ms", "p95_ms", "speedup",
                                                "speedup_same_exec", "weight_ratio", "peak_mem_gib",
                                                "first_call_s"]].to_string(index=False))
        if self.prof_rows:
            print(pd.DataFrame(self.prof_rows).pivot_table(index="category", columns=["variant", "res", "batch"],
                                                           values="gpu_ms").round(2).to_string())


def _slower_convs(rows: pd.DataFrame, fmt: str) -> set:
    """(C_in, C_out, k, stride) where `fmt` with its quantize pass took longer than cuDNN fp16, each point's time
    weighted by its calls per step and summed over the points."""
    conv = rows[rows.kind == "conv"].assign(total=lambda d: d.us * d.calls_per_step)
    out = set()
    for geo, g in conv.groupby(["c_in", "c_out", "ksize", "stride"]):
        if g[g.impl == fmt + " +quant"].total.sum() > g[g.impl == "fp16 cuDNN"].total.sum():
            out.add(tuple(int(v) for v in geo))
    return out


def _unet_row(variant, exec_mode, res, batch, t, base_ms, wbytes, fp16_bytes, peak, paths, first_s) -> dict:
    """One UNet-step row; speedups over the FP16 step under CUDA graphs (the issue's bar) and under the same
    execution mode (e.g. compiled W8A8 over compiled FP16), where those were measured."""
    import numpy as np

    p50 = float(np.median(t))
    ratio = lambda ex: round(base_ms[(ex, res, batch)] / p50, 3) if (ex, res, batch) in base_ms else None  # noqa: E731
    return dict(variant=variant, exec=exec_mode, res=res, batch=batch, p50_ms=round(p50, 3),
                p95_ms=round(float(np.percentile(t, 95)), 3), speedup=ratio("graph"), speedup_same_exec=ratio(exec_mode),
                weight_bytes=wbytes, weight_ratio=round(wbytes / fp16_bytes, 4), peak_mem_gib=round(peak, 3),
                layer_modes=paths, first_call_s=round(first_s, 2))


def _free() -> None:
    import torch

    gc.collect()
    torch.cuda.empty_cache()


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
