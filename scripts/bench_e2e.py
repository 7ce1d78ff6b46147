r"""The whole image, every precision mode in its fastest execution, in one process and one run (README: performance).

Example (one GPU, full-size SDXL-Turbo architecture with random weights: latency does not depend on weight values):
    python scripts/bench_e2e.py --config configs/stable-diffusion/sdxl_turbo.yaml --random_weights \
        --out results/e2e_nvidia_h200.csv --profile_out results/e2e_profile_nvidia_h200.csv
Tiny model on the CPU (eager; what the tests run; the numbers mean nothing):
    python scripts/bench_e2e.py --modes fp16 w8a8 --vae fp16 tiny int8 --res 64 --batch 1 2 --repeats 2

Every variant goes through the serving Runner (quant_utils/runtime.py), the one the load test, latency_probe and
quant_txt2img use: UNet variants `fp16/graph` (CUDA graphs), `fp16/compile` and every quantized mode with compiled
blocks (`--quant_exec`), each with the decoders `--vae` (`--vae_modes` limits which UNet modes get the non-FP16
decoders). speedup_vs_fp16 = total p50 of the fastest FP16 variant with the FP16 decoder at the same cell / this
row's; speedup_same_vae: the same against the fastest FP16 UNet with this row's decoder. Columns: docs/outputs.md.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import NamedTuple
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import (PROMPTS_32, HelpFormatter, add_model_args, check_device_for_exec, compile_cache_from_args,  # noqa: E402
                             decoder_from_args, pipeline_from_args, user_errors, weights_label)
from quant_utils.csvio import device_name, provenance, write_csv  # noqa: E402
from quant_utils.decoders import attention_path, plan_decoder_attention  # noqa: E402
from quant_utils.errors import ConfigError  # noqa: E402
from quant_utils.fusion import fuse_qkv, fused_attentions  # noqa: E402
from quant_utils.generation import read_prompts  # noqa: E402
from quant_utils.latency import device_weight_bytes, summarize, timed_call  # noqa: E402
from quant_utils.layer_plan import dense_summary, plan_l2, plan_rows  # noqa: E402
from quant_utils.mixdq import pipeline_view, quantized_copy  # noqa: E402
from quant_utils.modes import BITS, DECODERS, MIXDQ  # noqa: E402
from quant_utils.decoders import wants_fused_blocks, wants_subpixel  # noqa: E402
from quant_utils.norms import decoder_group_norm  # noqa: E402
from quant_utils.pipeline import check_resolution  # noqa: E402
from quant_utils.qlayers import BACKENDS, Backend  # noqa: E402
from quant_utils.kernels.backend import conv_out_channels_last  # noqa: E402
from quant_utils.kernels.launch import kernel_forms  # noqa: E402
from quant_utils.kernels.tuning import current_tuning  # noqa: E402
from quant_utils.runtime import Runner, compile_counters, decoder_conv_out, resolve_exec  # noqa: E402

E2E_MODES = tuple(BITS) + (MIXDQ,)
# a UNet variant's exec name -> (the Runner's exec mode, fused projections (fusion.fuse_qkv, FP16 and quantized),
# compiled regions: None = --compile_regions)
UNET_EXECS = {"eager": ("eager", False, None), "graph": ("graph", False, None), "compile": ("compile", False, None),
              "compile-fused": ("compile", True, None), "compile-blocks": ("compile", False, "blocks"),
              "compile-fused-blocks": ("compile", True, "blocks")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p, resolution=False)
    p.add_argument("--modes", nargs="+", default=list(E2E_MODES), choices=E2E_MODES,
                   help="UNet precision modes (mixdq: MixDQ's weight_4.00 + act_7.77 + its 1%% FP16 activations)")
    p.add_argument("--fp16_exec", nargs="+", default=None, choices=list(UNET_EXECS),
                   help="FP16 UNet executions (default on CUDA: graph compile; on a CPU: eager); compile-fused: "
                        "compiled with fused attention projections (one GEMM for q/k/v, one for cross-attention's "
                        "k/v: fewer launches, quant_utils/fusion.py), a candidate for the fastest FP16 UNet; "
                        "*-blocks: compiled with --compile_regions blocks (to set both forms side by side)")
    p.add_argument("--quant_exec", nargs="+", default=None, choices=[e for e in UNET_EXECS if e != "eager"],
                   help="quantized UNets' executions (default on CUDA: compile; on a CPU: eager); compile-fused: their "
                        "attention projections fused where they are exactly fusable (same bits and input quantizer)")
    p.add_argument("--vae_kinds", "--vaes", dest="vae_kinds", nargs="+", default=["fp16", "int8", "tiny"],
                   choices=DECODERS, help="decoders measured")
    p.add_argument("--vae_modes", nargs="+", default=["fp16", "w8a8"], choices=E2E_MODES,
                   help="UNet modes that are also measured with the non-FP16 decoders")
    p.add_argument("--res", type=int, nargs="+", default=[512, 768, 1024], help="square resolutions")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8], help="batch sizes")
    p.add_argument("--cells", nargs="*", default=None, metavar="RESxBATCH",
                   help="measure these cells (e.g. 1024x4 512x1), in this order, instead of --res x --batch")
    p.add_argument("--repeats", type=int, default=6, help="timed calls per cell")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per cell after its first call")
    p.add_argument("--interleave", action="store_true",
                   help="keep every variant alive and time each cell's calls round-robin across them (clock drift "
                        "hits all alike; holds every variant's weights and CUDA-graph pools at once)")
    p.add_argument("--backend", default=None, choices=BACKENDS,
                   help="quantized backend (default: kernel on CUDA, fake on a CPU)")
    p.add_argument("--calib_num", type=int, default=4, help="calibration prompts per quantized mode (and the int8 VAE)")
    p.add_argument("--calib_prompts", default=PROMPTS_32, help="calibration prompts file")
    p.add_argument("--prompts_file", default=PROMPTS_32, help="prompts (latency does not depend on them)")
    p.add_argument("--profile_points", nargs="*", default=[], metavar="RESxBATCH",
                   help="cells (e.g. 1024x4 512x1) whose image is profiled by kernel category into --profile_out")
    p.add_argument("--profile_out", default=None, help="profile CSV (default <out stem>_profile.csv)")
    p.add_argument("--vae_errors_out", default=None,
                   help="int8 decoder vs FP16 decoder, relative error per layer and per image (CSV)")
    p.add_argument("--layer_plan_out", default=None,
                   help="the quantized UNets' per-bucket layer plans (CSV; default <out stem>_layer_plan.csv)")
    p.add_argument("--tuning_out", default=None, help="save the kernel tile configs tuned in this run (JSON) here")
    p.add_argument("--cache_state", default="unknown",
                   help="recorded in the provenance: whether Inductor's on-disk cache was cold or warm at the start")
    p.add_argument("--out", default="logs/e2e/e2e.csv", help="output CSV (results/ only when asked)")
    args = p.parse_args(argv)
    args.vae = "fp16"
    for r in args.res:
        check_resolution(r, r)
    if min(args.batch) < 1 or args.repeats < 1 or args.warmup < 0 or args.calib_num < 1:
        p.error("--batch, --repeats and --calib_num must be >= 1, --warmup >= 0")
    try:
        args.profile_points = [tuple(int(v) for v in s.split("x")) for s in args.profile_points]
        args.cells = [tuple(int(v) for v in s.split("x")) for s in args.cells] if args.cells else \
            [(r, b) for r in args.res for b in args.batch]
    except ValueError:
        p.error(f"--profile_points and --cells must look like 1024x4 512x1, got {args.profile_points} {args.cells}")
    for r, b in args.cells:
        check_resolution(r, r)
        if b < 1:
            p.error(f"batch {b} in --cells: must be >= 1")
    args.res = sorted({r for r, _ in args.cells})
    check_device_for_exec(args)
    for flag, execs in (("--fp16_exec", args.fp16_exec), ("--quant_exec", args.quant_exec)):
        if set(execs or []) - {"eager"} and not torch.cuda.is_available():
            raise ConfigError(f"{flag} {' '.join(execs)}: CUDA graphs and compiled blocks need a CUDA GPU; "
                              "this machine has none (eager only)")
    return args


def unet_variants(args, cuda: bool) -> list[tuple[str, str]]:
    """(mode, exec) in run order: CUDA-graph FP16 before compiled (compiling changes a UNet in place)."""
    fp16_exec = args.fp16_exec or (["graph", "compile"] if cuda else ["eager"])
    quant_exec = args.quant_exec or (["compile"] if cuda else ["eager"])
    out = [("fp16", e) for e in sorted(fp16_exec, key=list(UNET_EXECS).index)] if "fp16" in args.modes else []
    return out + [(m, e) for m in args.modes if m != "fp16" for e in quant_exec]


def main(args: argparse.Namespace) -> None:
    # 1. the FP16 pipeline, the decoders, the compile cache
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if cuda:
        args.fp16 = True
    cfg, pipe, device = pipeline_from_args(args)
    backend = args.backend or Backend.for_device("cuda" if cuda else "cpu")
    cache = compile_cache_from_args(args)
    prompts = read_prompts(repo_path(args.prompts_file))
    calib = read_prompts(repo_path(args.calib_prompts))[: args.calib_num]
    steps = args.steps or cfg.steps
    decoders = {}
    for kind in args.vae_kinds:
        t0 = time.perf_counter()
        args.vae = kind
        decoders[kind] = decoder_from_args(pipe, args, res=min(args.res)) or pipe.vae
        print(f"decoder {kind}: ready in {time.perf_counter() - t0:.1f} s")
    args.vae = "fp16"
    if args.vae_errors_out and "int8" in decoders:
        from quant_utils.decoders import decoder_errors, use_fused_blocks, use_subpixel_upsample

        on_cuda = pipe.vae.device.type == "cuda"  # the int8 decoder in the forms its Runners serve
        use_fused_blocks(decoders["int8"], wants_fused_blocks(args.vae_fuse, "int8", on_cuda))
        use_subpixel_upsample(decoders["int8"], wants_subpixel(args.vae_upsample, on_cuda))
        z = Runner(pipe, "eager").denoise(prompts[:2], [args.seed, args.seed + 1], min(args.res), min(args.res), steps)
        err = pd.DataFrame(decoder_errors(pipe.vae, decoders["int8"], z.to(pipe.vae.dtype)))
        write_csv(err, repo_path(args.vae_errors_out),
                  provenance(script="bench_e2e", part="int8 decoder error vs fp16 decoder", weights=weights_label(cfg, args),
                             backend=backend, res=min(args.res)))
    fp16_unet = pipe.unet
    meta = provenance(script="bench_e2e", weights=weights_label(cfg, args), backend=f"{backend} (quantized modes)",
                      model=cfg.name, compile_cache=cache, inductor_cache=args.cache_state, seed=args.seed,
                      repeats=f"{args.repeats} timed calls per cell after its first call and {args.warmup} warm-up",
                      order="interleaved: each cell's timed calls round-robin across all variants" if args.interleave
                      else "one variant at a time",
                      int8_conv_outputs="nhwc, every int8 conv (MIXDQ_CONV_NHWC=1)" if conv_out_channels_last()
                      else "per decoder (the int8 decoder's: vae_conv_out column); the UNets' nchw")
    out = repo_path(args.out)
    rows, prof_rows, kernel_rows, plans, att_rows = [], [], [], {}, {}
    cells = args.cells

    # 2. every UNet variant x decoder x cell; the CSV is rewritten after every cell (a timeout keeps what ran).
    #    --interleave: all variants alive, each cell's timed calls round-robin across them; else one at a time
    entries = _entries(args, pipe, fp16_unet, decoders, backend, cfg, calib, prompts, steps, cuda, device)
    for group in ([list(entries)] if args.interleave else ([e] for e in entries)):
        for res, batch in tqdm(cells, desc=" + ".join(e.label for e in group), unit="cell"):
            for e, row in zip(group, _measure_group(group, prompts, res, batch, steps, args)):
                if row is None:
                    print(f"  {e.label} {res}px batch {batch}: out of memory, skipped")
                    continue
                rows.append({"mode": e.mode, "wbits": round(e.summary["avg_wbits"], 3),
                             "abits": round(e.summary["avg_abits"], 3),
                             "unet_exec": e.exec_mode, "compile_regions": e.runner.compile_regions
                             if e.runner.exec_mode == "compile" else "",
                             "vae": e.kind, "vae_exec": e.runner.vae_exec,
                             "vae_attention": attention_path(decoders[e.kind], (batch, 4, res // 8, res // 8)),
                             "group_norm": e.runner.group_norm, "vae_group_norm": e.runner.vae_group_norm,
                             "vae_conv_out": e.runner.vae_conv_out if e.kind == "int8" else "",
                             "vae_fused_blocks": e.runner.vae_fused_blocks, "vae_upsample": e.runner.vae_upsample,
                             "res": res, "batch": batch, **row,
                             "weight_bytes": device_weight_bytes(e.unet),
                             "fused_attentions": fused_attentions(e.unet),
                             **_plan_columns(e.unet, e.runner.unet_bucket(batch, res, res)),
                             "vae_weight_bytes": device_weight_bytes(decoders[e.kind]),
                             "weight_config": Path(e.summary.get("weight_config", "")).name,
                             "act_config": Path(e.summary.get("act_config", "")).name, "gpu": device_name(),
                             "weights": weights_label(cfg, args)})
                if cuda:  # which kernel forms the tile configs ran (opt-in ones swapped in by a GPU job: TILES=1)
                    meta["tile_configs"] = f"linear shapes of the loaded tuning: {kernel_forms(current_tuning().configs)}"
                    meta["layer_plan_l2"] = f"{plan_l2()} (MIXDQ_PLAN_L2: the plan's path times with weights in L2 or not)"
                write_csv(with_speedups(pd.DataFrame(rows)), out, meta)
                plans[e.mode, e.exec_mode] = plan_rows(e.unet)  # (compile and compile-fused plan different layers)
                if plans[e.mode, e.exec_mode]:
                    write_csv(pd.DataFrame([dict(mode=m, unet_exec=x, **r) for (m, x), rs in plans.items() for r in rs]),
                              repo_path(args.layer_plan_out or out.with_name(out.stem + "_layer_plan.csv")),
                              {**meta, "timing": "per layer geometry: CUDA-graph replays of its kernel (codes "
                                                 "quantized beforehand) and of cuBLAS/cuDNN on an fp16 weight"})
                if e.runner.vae_attention == "auto":  # the decoder attention's measured times (CUDA)
                    att = [dict(vae=e.kind, res=res, batch=batch, **r) for r in
                           plan_decoder_attention(decoders[e.kind], (batch, 4, res // 8, res // 8))]
                    att_rows.update({(r["vae"], r["q_shape"]): r for r in att})
                    if att_rows:
                        write_csv(pd.DataFrame(list(att_rows.values())), out.with_name(out.stem + "_vae_attention.csv"),
                                  {**meta, "timing": "SDPA and explicit score matrices on random q/k/v of the query "
                                                     "shape: median of CUDA-graph replays"})
                if (res, batch) in args.profile_points and cuda:
                    prof_rows += _profile(e, prompts, res, batch, steps, kernel_rows)
                    prof_out = repo_path(args.profile_out or out.with_name(out.stem + "_profile.csv"))
                    prof_meta = {**meta, "timing": "torch.profiler, one image (compiled code run outside its CUDA graph)"}
                    write_csv(pd.DataFrame(prof_rows), prof_out, prof_meta)
                    write_csv(pd.DataFrame(kernel_rows), prof_out.with_name(prof_out.stem + "_kernels.csv"), prof_meta)
        group = e = None  # drop this group's Runners: the generator frees its UNet copy when it moves on
        _free()
        if args.tuning_out and cuda:
            current_tuning().save(repo_path(args.tuning_out))  # the Runners' tuning
    if not rows:
        raise ConfigError("no cell could be measured")

    # 3. print the image table
    df = with_speedups(pd.DataFrame(rows))
    cols = ["mode", "unet_exec", "vae", "res", "batch", "text_p50_ms", "unet_p50_ms", "vae_p50_ms", "total_p50_ms",
            "speedup_vs_fp16", "speedup_same_vae", "first_call_s"]
    print(df[cols].round(3).to_string(index=False))
    print(f"-> {out}")


class Entry(NamedTuple):
    """One measured variant: a UNet mode and execution with one decoder, its Runner, and the eager images of the
    first cell (the check that the fast path computes the same images)."""
    mode: str
    exec_mode: str
    kind: str
    runner: Runner
    unet: torch.nn.Module
    summary: dict
    own_bytes: int      # device bytes of the models this variant uses (text encoders, its UNet, its decoder)
    check: tuple        # the first cell's call arguments
    ref: object         # its eager image (uint8 array, as float)

    @property
    def label(self) -> str:
        return f"{self.mode} {self.exec_mode} vae={self.kind}"


def _entries(args, pipe, fp16_unet, decoders: dict, backend, cfg, calib, prompts, steps: int, cuda: bool, device):
    """The variants in order, built one UNet mode at a time (a mode's Runners share its UNet copy)."""
    import copy

    r0, b0 = args.cells[0]
    check = ([prompts[i % len(prompts)] for i in range(b0)], [args.seed + i for i in range(b0)], r0, r0, steps)
    encoders = sum(device_weight_bytes(m) for m in (pipe.text_encoder, pipe.text_encoder_2) if m is not None)
    variants = unet_variants(args, cuda)
    for mode, exec_mode in variants:
        t0 = time.perf_counter()
        if mode == "fp16":
            own = exec_mode.startswith("compile")  # compiling (and fusing) change a UNet in place
            variant = pipeline_view(pipe, copy.deepcopy(fp16_unet) if own else fp16_unet)
            summary = {"avg_wbits": 16.0, "avg_abits": 16.0, "weight_config": "", "act_config": ""}
        else:
            variant, summary = quantized_copy(pipe, mode, cfg.name, None, calib, args.seed, min(args.res), min(args.res),
                                              steps, backend=backend)
        runner_exec, fuse, regions = UNET_EXECS[exec_mode]
        if fuse:
            fused = fuse_qkv(variant.unet)
            print(f"{mode}: fused {fused['self']} self- and {fused['cross']} cross-attention projections"
                  + (f"; kept {len(fused['kept'])}: {sorted(set(fused['kept'].values()))}" if fused["kept"] else ""))
        print(f"{mode}: UNet ready in {time.perf_counter() - t0:.1f} s")
        kinds = [k for k in args.vae_kinds if k == "fp16" or mode in args.vae_modes]
        if exec_mode == "graph" and mode == "fp16" and len(variants) > 1:
            kinds = ["fp16"]  # the CUDA-graph FP16 UNet is the reference for graphs alone, not a serving candidate
        # eager images of the first cell, before a compiled Runner compiles the UNet's blocks in place (with the fast
        # path's plan settings: the eager call plans the first cell's bucket, which the UNet keeps)
        plans = dict(layer_plan=args.layer_plan, dense_budget=args.dense_budget, vae_attention=args.vae_attention,
                     group_norm=args.group_norm, fuse_qkv="off")  # fused or not: the entry's exec (compile-fused)
        # each decoder's conv layout and GroupNorm form as its fast path resolves them, for the eager reference too:
        # decoders are shared across entries, and a Runner switches its decoder's forms in place
        compiled = cuda and args.vae_exec != "eager"
        vae_forms = {}
        for k in kinds:
            conv_out = decoder_conv_out(args.vae_conv_out, k, compiled)
            vae_forms[k] = dict(vae_conv_out=conv_out,
                                vae_group_norm=decoder_group_norm(args.vae_group_norm, k, compiled, conv_out),
                                vae_fuse="on" if wants_fused_blocks(args.vae_fuse, k, cuda) else "off",
                                vae_upsample="subpixel" if wants_subpixel(args.vae_upsample, cuda) else "nearest")
        refs = {k: Runner(variant, "eager", vae=decoders[k], **vae_forms[k], **plans)(*check).astype(float)
                for k in kinds}
        for kind in kinds:
            runner = Runner(variant, resolve_exec(runner_exec, device), vae_exec=args.vae_exec,
                            vae=decoders[kind], vae_kind=kind, compile_shapes=args.compile_shapes,
                            compile_regions=regions or args.compile_regions, **vae_forms[kind], **plans)
            yield Entry(mode, exec_mode, kind, runner, variant.unet, summary,
                        encoders + device_weight_bytes(variant.unet) + device_weight_bytes(decoders[kind]),
                        check, refs[kind])
            del runner
            _free()
        del variant
        _free()


def _measure_group(group: list[Entry], prompts: list[str], res: int, batch: int, steps: int, args) -> list[dict | None]:
    """One cell for every entry of `group`: each entry's first call (compile / capture / tile tuning / layer plan)
    and warm-up in turn, timed apart with their memory; then `repeats` rounds of one timed call per entry, the
    order reversed every other round (with several entries: interleaved, so clock drift hits all alike).
    None for an entry that ran out of memory."""
    cuda = group[0].runner.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    first, live = {}, []
    for e in group:
        try:
            sync()
            before = torch.cuda.memory_allocated() if cuda else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            e.runner.pop_setup_s()  # only this cell's one-time work below
            compiled = compile_counters()
            t0 = time.perf_counter()
            timed_call(e.runner, prompts, res, res, batch, steps, args.seed)
            sync()
            first_s = time.perf_counter() - t0
            setup = {f"first_call_{k}_s": round(v, 2) for k, v in e.runner.pop_setup_s().items()}
            # what torch.compile did in it: new graphs, seconds in Dynamo (trace, guards, backend) and the backend
            setup.update({f"first_call_{k}": round(v - compiled[k], 2) for k, v in compile_counters().items()})
            for _ in range(args.warmup):
                timed_call(e.runner, prompts, res, res, batch, steps, args.seed)
            sync()
            # its weights + what this cell allocated above what was resident (activations, the bucket's graph pool)
            peak = (e.own_bytes + torch.cuda.max_memory_allocated() - before) / 2**30 if cuda else float("nan")
            first[id(e)] = {"first_call_s": round(first_s, 2), **setup, "peak_mem_gib": round(peak, 3)}
            live.append(e)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
    samples: dict[int, list] = {id(e): [] for e in live}
    for r in range(args.repeats):
        for e in (live if r % 2 == 0 else live[::-1]):
            samples[id(e)].append(timed_call(e.runner, prompts, res, res, batch, steps, args.seed))
    out = []
    for e in group:
        if id(e) not in first:
            out.append(None)
            continue
        calls = samples[id(e)]
        row = {k: round(v, 3) for k, v in summarize(calls, batch).items()}
        half = len(calls) // 2  # the same variant timed twice (first and second half of the rounds)
        p50 = row["total_p50_ms"]
        row["drift_pct"] = (round(100 * (np.median([c["total"] for c in calls[half:]]) -
                                         np.median([c["total"] for c in calls[:half]])) / p50, 2)
                            if half else float("nan"))
        row.update(repeats=args.repeats, **first[id(e)])
        row["diff_vs_eager"] = (round(float(abs(e.runner(*e.check).astype(float) - e.ref).mean()), 3)
                                if (res, batch) == (e.check[2], len(e.check[0])) else float("nan"))
        out.append(row)
    return out


def _plan_columns(unet, bucket: tuple) -> dict:
    """The layer plan of this cell's bucket: layers on a low-bit kernel, of them moved to wonly and to dense, and the
    device bytes of the dense layers' fp16 weights (every bucket planned so far: what the UNet holds)."""
    s = dense_summary(unet, bucket)
    return {k: s[k] for k in ("kernel_layers", "wonly_layers", "dense_layers", "dense_bytes")}


def with_speedups(df: pd.DataFrame) -> pd.DataFrame:
    """speedup_vs_fp16: fastest FP16 UNet with the FP16 decoder at the cell / this total p50; speedup_same_vae: the
    fastest FP16 UNet with this row's decoder / this total p50 (NaN where that FP16 row was not measured)."""
    fp16 = df[df["mode"] == "fp16"].groupby(["vae", "res", "batch"])["total_p50_ms"].min()
    key = list(zip(df["vae"], df["res"], df["batch"]))
    base = [fp16.get(("fp16", r, b), float("nan")) for _, r, b in key]
    same = [fp16.get(k, float("nan")) for k in key]
    df = df.copy()
    df["speedup_vs_fp16"] = (pd.Series(base, index=df.index) / df["total_p50_ms"]).round(3)
    df["speedup_same_vae"] = (pd.Series(same, index=df.index) / df["total_p50_ms"]).round(3)
    return df


def _profile(e: Entry, prompts, res: int, batch: int, steps: int, kernels: list[dict]) -> list[dict]:
    """Rows by kernel category of the whole image (stage `image`) and of its decode alone (stage `decode`: the
    decoder on the same latents, so that UNet and decoder kernels are told apart); appends the rows per kernel to
    `kernels`."""
    from quant_utils.kernel_bench import profile_step

    runner = e.runner
    exec_mode, runner.exec_mode = runner.exec_mode, "eager"  # the stages' (compiled) code outside the CUDA graphs
    try:
        image_prompts, seeds = [prompts[0]] * batch, list(range(batch))
        z = runner.denoise(image_prompts, seeds, res, res, steps).to(runner.vae_dtype)
        stages = {"image": lambda: runner(image_prompts, seeds, res, res, steps),
                  "decode": lambda: runner.stage_fns["vae"](z)}
        rows = []
        for stage, fn in stages.items():
            cell = dict(mode=e.mode, unet_exec=e.exec_mode, vae=e.kind, res=res, batch=batch, stage=stage)
            per_kernel = []
            rows += [dict(**cell, **r) for r in profile_step(fn, per_kernel)]
            kernels += [dict(**cell, **r) for r in per_kernel]
        return rows
    finally:
        runner.exec_mode = exec_mode


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
