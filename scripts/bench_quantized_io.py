r"""Quantized model folders against the FP16 UNet: file bytes, load to first image in a cold process, GPU memory.

Example (GPU, full-size SDXL-Turbo architecture with random weights; scripts/device/ship_job.sh runs this):
    python scripts/bench_quantized_io.py --config configs/stable-diffusion/sdxl_turbo.yaml --random_weights \
        --exec eager --work_dir /tmp/qio --out_dir results
Tiny model on the CPU (what the tests run):
    python scripts/bench_quantized_io.py --formats W8A8 --today W8A8 --work_dir logs/qio/work

1. Build the model once; write the FP16 UNet folder (save_pretrained: safetensors) and, per --formats, the
   quantized folder (weights quantized, activations calibrated on --calib_num prompts; --today's format also
   keeps today's ckpt.pth).
2. Time each way to a first image in a fresh process (one subprocess per measurement, --repeats each; first
   --warmup runs of the last format, written as run 0, fill Triton's and the kernel tuning caches; the disk cache
   is warm): `fp-folder` (the unquantized UNet, float16 on a GPU, the tiny model's float32 on a CPU: built on the
   meta device, its safetensors read straight onto the device, as from_pretrained does at best),
   `quantized-folder` (quantized_io.load_quantized) and `fp-then-quantize` (today's path: the unquantized folder,
   quantize_unet, ckpt.pth, the backend switch).
3. Write <out_dir>/quantized_size_<gpu>.csv: one row per measurement, file sizes on every row (docs/outputs.md).
"""
from __future__ import annotations

import time

T_START = time.perf_counter()  # before the heavy imports: a child's start-up time is measured from here

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.bitconfig import config_dir  # noqa: E402
from quant_utils.cli import (HelpFormatter, add_model_args, check_device_for_exec, model_config_from_args,  # noqa: E402
                             nonnegative_int, pipeline_from_args, positive_int, runner_from_args, user_errors,
                             weights_label)
from quant_utils.csvio import device_name, provenance, write_csv  # noqa: E402
from quant_utils.latency import device_weight_bytes  # noqa: E402
from quant_utils.mixdq import QuantRequest, quantize_pipeline  # noqa: E402
from quant_utils.pipeline import build_pipeline, load_model_config, resolve_device  # noqa: E402
from quant_utils.qlayers import BACKENDS, Backend  # noqa: E402

# name -> (weight config, act config or uniform act bits, act protect list), files of <model>/final_config
FORMATS = {"W8A8": ("uniform_8.yaml", 8, None), "W4A8": ("uniform_4.yaml", 8, None),
           "weight_4.00": ("weight_4.00.yaml", "act_7.77.yaml", "act_sensitivie_a8_1%.pt"),
           "weight_3.66": ("weight_3.66.yaml", "act_7.38.yaml", "act_sensitivie_a8_1%.pt")}
PROMPT = "a corgi wearing sunglasses on a beach"
RESULT = "BENCH_RESULT "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p, quantized=False)
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS), help="quantized formats")
    p.add_argument("--today", default="W4A8", help="format timed on today's path (FP16 folder, then quantize); none: skip")
    p.add_argument("--backend", default=None, choices=BACKENDS, help="default: kernel on CUDA, else fake")
    p.add_argument("--repeats", type=positive_int, default=1, help="cold processes per variant")
    p.add_argument("--warmup", type=nonnegative_int, default=None,
                   help="processes of the last format first, as run 0, to fill Triton's and the tuning caches "
                        "(default: 1 with the kernel backend, else 0)")
    p.add_argument("--calib_num", type=positive_int, default=2, help="calibration prompts (sizes and times do not depend on them)")
    p.add_argument("--work_dir", default="logs/quantized_io/work", help="where the FP16 and quantized folders go")
    p.add_argument("--out_dir", default="logs/quantized_io", help="where quantized_size_<gpu>.csv goes")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # 'variant:folder[:format]' in a measured process
    args = p.parse_args(argv)
    if args.today not in ("none", *args.formats):
        p.error(f"--today {args.today}: must be one of --formats or none")
    check_device_for_exec(args)  # everything checkable is checked before the model is built
    model_config_from_args(args)
    return args


def request(cfg_name: str, fmt: str) -> QuantRequest:
    wcfg, act, protect = FORMATS[fmt]
    d = lambda kind, f: str(config_dir(cfg_name, kind) / f)  # noqa: E731
    return QuantRequest(model_name=cfg_name, config_weight_mp=d("weight", wcfg), abits=act if isinstance(act, int) else 8,
                        config_act_mp=None if isinstance(act, int) else d("act", act),
                        act_protect=protect and d("act", protect), w_method="minmax", a_method="minmax")


def folder_bytes(*paths: Path) -> int:
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def load_fp_unet(folder: str, device: str, dtype: torch.dtype):
    """An unquantized UNet folder (save_pretrained) the fast way, with or without accelerate installed: built on the
    meta device, its safetensors read straight onto the device."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder))
    state = {k: v for f in sorted(Path(folder).glob("*.safetensors")) for k, v in load_file(str(f), device=device).items()}
    unet.load_state_dict(state, assign=True)
    return unet.to(dtype).eval()


def child(args: argparse.Namespace) -> None:
    """One measured process: load one way, make the first image, print the timings as one JSON line."""
    from quant_utils.quantized_io import load_quantized

    variant, folder, fmt = (args.child.split(":") + [""])[:3]
    t0 = time.perf_counter()
    cfg, device = load_model_config(repo_path(args.config)), resolve_device(args.device)
    dtype = torch.float16 if args.fp16 else cfg.torch_dtype
    if variant == "quantized-folder":
        unet = load_quantized(folder, device, dtype, backend=args.backend)
    else:
        unet = load_fp_unet(folder, device, dtype)
    pipe = build_pipeline(cfg, device, dtype, random_weights=args.random_weights, unet=unet)
    if variant == "fp-then-quantize":  # today: quantize, the checkpoint's parameters, the backend switch
        ckpt = Path(folder).parent / f"{fmt}.ckpt.pth"
        quantize_pipeline(pipe, request(cfg.name, fmt), ckpt, [], 0, 0, 0, 0, backend=args.backend)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    mem_load = torch.cuda.memory_allocated() / 2**30 if cuda else float("nan")
    res = args.res or cfg.height
    runner_from_args(pipe, args)([PROMPT], [args.seed], res, res, args.steps or cfg.steps)
    t2 = time.perf_counter()
    print(RESULT + json.dumps({
        "startup_s": t0 - T_START, "load_s": t1 - t0, "first_image_s": t2 - t1, "mem_after_load_gib": mem_load,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "unet_device_gib": device_weight_bytes(pipe.unet) / 2**30, "height": res}))


def measure(args: argparse.Namespace, spec: str, device: str) -> dict:
    """Run one child process; its timings plus the whole process's wall-clock seconds."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", spec, "--config", args.config, "--device", device,
           "--exec", args.exec_mode, "--vae_exec", args.vae_exec, "--vae", args.vae, "--compile_shapes", args.compile_shapes,
           "--backend", args.backend, "--seed", str(args.seed)]
    cmd += ["--random_weights"] * args.random_weights + ["--fp16"] * args.fp16
    cmd += [a for k in ("res", "steps") if getattr(args, k) for a in (f"--{k}", str(getattr(args, k)))]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"measurement {spec} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return {"process_s": wall, **json.loads(line[len(RESULT):])}


def main(args: argparse.Namespace) -> None:
    if args.child:
        return child(args)
    # 1. the model; its FP16 UNet folder and one quantized folder per format
    if resolve_device(args.device).startswith("cuda"):
        args.fp16 = True
    cfg, pipe, device = pipeline_from_args(args)
    args.backend = str(args.backend or Backend.for_device(device))
    warmup = args.warmup if args.warmup is not None else int(args.backend == Backend.KERNEL)
    work = repo_path(args.work_dir)
    fp_dir = work / "fp_unet"
    pipe.unet.save_pretrained(fp_dir)
    fp_bytes, fp_dtype = folder_bytes(fp_dir), str(pipe.unet.dtype).removeprefix("torch.")
    fp_unet, calib = pipe.unet, [PROMPT] * args.calib_num
    sizes = {}
    for fmt in args.formats:
        pipe.unet = copy.deepcopy(fp_unet)
        ckpt = work / f"{fmt}.ckpt.pth" if fmt == args.today else None
        if ckpt:
            ckpt.unlink(missing_ok=True)  # calibrated afresh, for this model
        res = args.res or cfg.height
        s = quantize_pipeline(pipe, request(cfg.name, fmt), ckpt, calib, args.seed, res, res, 1, save_quantized=work / fmt)
        sizes[fmt] = (folder_bytes(work / fmt), s["avg_wbits"])
        pipe.unet = fp_unet
        print(f"{fmt}: {sizes[fmt][0] / 2**20:.1f} MiB ({sizes[fmt][0] / fp_bytes:.3f}x of the {fp_dtype} UNet's "
              f"{fp_bytes / 2**20:.1f} MiB), W avg {s['avg_wbits']:.2f} bits")
    del pipe, fp_unet
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # the measured processes have the GPU to themselves (this one holds its context only)
    # 2. cold processes
    variants = [("fp-folder", "", fp_dir, fp_bytes, 16.0 if fp_dtype != "float32" else 32.0)]
    variants += [("quantized-folder", f, work / f, *sizes[f]) for f in args.formats]
    if args.today != "none":
        variants.append(("fp-then-quantize", args.today, fp_dir, fp_bytes + folder_bytes(work / f"{args.today}.ckpt.pth"),
                         sizes[args.today][1]))
    rows, out = [], repo_path(args.out_dir) / f"quantized_size_{gpu_tag()}.csv"
    meta = provenance(script="bench_quantized_io", weights=weights_label(cfg, args), backend=args.backend,
                      exec=args.exec_mode, model=cfg.name, seed=args.seed)
    runs = [(0, variants[len(args.formats)])] * warmup + [(r, v) for r in range(1, args.repeats + 1) for v in variants]
    for run, (variant, fmt, folder, nbytes, wbits) in runs:
        m = measure(args, f"{variant}:{folder}:{fmt}", device)
        rows.append({"variant": variant, "format": fmt or fp_dtype, "avg_wbits": round(wbits, 3), "fp_dtype": fp_dtype,
                     "backend": args.backend if variant != "fp-folder" else "none", "exec": args.exec_mode, "vae": args.vae,
                     "run": run, "file_bytes": nbytes, "fp_file_bytes": fp_bytes,
                     "size_ratio": round(nbytes / fp_bytes, 4), **m,
                     "load_to_first_image_s": m["load_s"] + m["first_image_s"], "gpu": device_name(),
                     "weights": weights_label(cfg, args)})
        print(f"run {run} {variant} {fmt}: load {m['load_s']:.2f} s + first image {m['first_image_s']:.2f} s "
              f"(process {m['process_s']:.1f} s)")
        write_csv(pd.DataFrame(rows), out, meta)  # rewritten after each: a timeout keeps what was measured
    # 3. print
    df = pd.DataFrame(rows)
    print(df[["variant", "format", "run", "size_ratio", "load_s", "first_image_s", "process_s",
              "unet_device_gib"]].round(3).to_string(index=False))
    print(f"-> {out}")


def gpu_tag() -> str:
    from quant_utils.kernels.tuning import gpu_tag as tag

    return tag()


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
