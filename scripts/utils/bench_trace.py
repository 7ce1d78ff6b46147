"""How long torch.compile's tracing of the UNet's compiled regions takes, per region choice, on this machine's CPU.

A warm first call (Inductor's caches already hold the compiled code) is mostly Dynamo's trace of every distinct
region and its guards: that part runs on the CPU whatever the device, so it can be measured here. Each row is one
fresh process: the UNet (full-size SDXL-Turbo architecture by default, random weights, fp16; `w8a8` = uniform 8-bit
weights and activations on the fake-quant path; `w8a8-kernel` = the same on the int8 kernel path, what a GPU traces
(custom ops), its Triton kernels run by Triton's interpreter here (slow, but only the trace is compared)) compiled with `runtime.compile_unet_regions(regions, backend)`, then two calls at `--res` (a small latent: the
execution is cheap next to the trace). compile_backend: `eager` (Dynamo alone), `aot_eager` (Dynamo + AOTAutograd, what a
cold Inductor compile traces before code generation). Columns: mode, regions, compile_backend, modules (compiled regions),
graphs (distinct Dynamo graphs), first_s, second_s, trace_s (= first_s - second_s), dynamo_bytecode_s (Dynamo's
bytecode tracing), backend_s (time in the compile backend), guards_s (building guards).
    python scripts/utils/bench_trace.py --out logs/compile_trace_cpu.csv
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import HelpFormatter, positive_int, user_errors  # noqa: E402
from quant_utils.csvio import cpu_name, provenance, write_csv  # noqa: E402
from quant_utils.pipeline import load_model_config  # noqa: E402
from quant_utils.runtime import COMPILE_REGIONS  # noqa: E402

FULL = "configs/stable-diffusion/sdxl_turbo.yaml"
MODES = ("fp16", "w8a8", "w8a8-kernel")
# dynamo_timed names in torch.compile's compilation_time_metrics (torch 2.11-2.14)
METRICS = {"dynamo_bytecode_s": "bytecode_tracing", "backend_s": "OutputGraph.call_user_compiler",
           "guards_s": "build_guards"}


def one_row(config: str, mode: str, regions: str, backend: str, res: int, threads: int) -> dict:
    """In this (fresh) process: build, compile, time two calls; the row as a dict."""
    import torch
    from torch._dynamo.utils import compilation_time_metrics, counters

    from quant_utils import kernel_bench as kb
    from quant_utils.pipeline import build_unet_skeleton, load_model_config
    from quant_utils.quantize import use_kernels
    from quant_utils.runtime import compile_unet_regions

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    unet = build_unet_skeleton(load_model_config(repo_path(config))).to_empty(device="cpu").to(torch.float16)
    with torch.no_grad():
        for p in unet.parameters():  # random weights, drawn fast (values do not change what is traced)
            p.normal_(0, 0.02)
        inputs = kb.unet_inputs(unet, 1, res, seed=1)
        if mode.startswith("w8a8"):
            kb.quantize_random(unet, 8, 8, calib=inputs)
        if mode == "w8a8-kernel":  # (set_backend("kernel") would fall back to fake-quant on this CPU)
            use_kernels(unet)
        modules = compile_unet_regions(unet, regions, backend=backend)
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            unet(**inputs)
            times.append(time.perf_counter() - t0)
    row = dict(mode=mode, regions=regions, compile_backend=backend, modules=modules, graphs=counters["stats"]["unique_graphs"],
               first_s=round(times[0], 2), second_s=round(times[1], 2), trace_s=round(times[0] - times[1], 2))
    row.update({col: round(sum(compilation_time_metrics.get(name, [])), 2) for col, name in METRICS.items()})
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", default=FULL, help="model config (its UNet architecture; weights are random)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                   help="UNet precision and path (w8a8: fake quantization; w8a8-kernel: the int8 kernels, interpreted)")
    p.add_argument("--regions", nargs="+", default=list(COMPILE_REGIONS), choices=list(COMPILE_REGIONS),
                   help="compiled-region choices (--compile_regions)")
    p.add_argument("--backends", nargs="+", default=["eager", "aot_eager"], choices=["eager", "aot_eager"],
                   help="torch.compile backends: eager = Dynamo alone, aot_eager = Dynamo + AOTAutograd")
    p.add_argument("--res", type=positive_int, default=64, help="image side, pixels (latent = res / 8)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch threads per process")
    p.add_argument("--out", default="logs/compile_trace_cpu.csv", help="CSV to write")
    p.add_argument("--_row", default=None, help=argparse.SUPPRESS)  # internal: measure one row, print it as JSON
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    if args._row:
        print("ROW " + json.dumps(one_row(args.config, *args._row.split(","), args.res, args.threads)))
        return 0
    load_model_config(repo_path(args.config))  # a bad config stops here with one error line, not in a row's process
    rows, load_before = [], os.getloadavg()[0]
    for backend in args.backends:
        for mode in args.modes:
            for regions in args.regions:
                cmd = [sys.executable, __file__, "--config", args.config, "--res", str(args.res),
                       "--threads", str(args.threads), "--_row", f"{mode},{regions},{backend}"]
                env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"TRITON_INTERPRET": "1"} if mode == "w8a8-kernel" else {})}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")), None)
                if proc.returncode or line is None:
                    raise RuntimeError(f"{mode} {regions} {backend} failed:\n{proc.stderr[-2000:]}")
                rows.append(json.loads(line[4:]))
                print(rows[-1], flush=True)
    write_csv(pd.DataFrame(rows), repo_path(args.out),
              provenance(script="scripts/utils/bench_trace.py", device=f"cpu: {cpu_name()}", cores=os.cpu_count(),
                         loadavg_1min_before=round(load_before, 2),
                         loadavg_1min_after=round(os.getloadavg()[0], 2), config=args.config, weights="random (values do not matter)",
                         backend="fp16: none; w8a8: fake (fake-quant path); w8a8-kernel: kernel (int8 Triton kernels, "
                                 "interpreted on the CPU)",
                         res=args.res, threads=args.threads,
                         note="one fresh process per row; w8a8: fake-quant path; w8a8-kernel: int8 kernel path (Triton "
                              "interpreted); not a GPU measurement"))
    return 0


if __name__ == "__main__":
    with user_errors():
        sys.exit(main(parse_args()))
