import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "gpu"))  # kernel_selfcheck: the kernel checks the CPU and GPU tests share
TINY = "configs/stable-diffusion/sdxl_turbo_tiny.yaml"


def run_script(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run scripts/<script> as a user would (subprocess, repo root as cwd)."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


# A Python program's prologue: the tiny UNet in fp16 on the CPU, quantized W8A8 (min-max ranges on one forward of
# `inputs`), on the fake-quant backend (+ KERNEL_BACKEND: the real kernels, interpreted). Tests append what they
# check and run it with run_interpreted.
QUANT_UNET = """
import warnings
import torch
from quant_utils import kernel_bench as kb
from quant_utils.calibrate import observing
from quant_utils.pipeline import build_pipeline, load_model_config
from quant_utils.quantize import make_spec, quantize_unet, set_backend, uniform_bits
warnings.simplefilter("ignore")
unet = build_pipeline(load_model_config("configs/stable-diffusion/sdxl_turbo_tiny.yaml"), device="cpu",
                      dtype=torch.float16).unet
inputs = kb.unet_inputs(unet, 1, 64)
quantize_unet(unet, make_spec(unet, uniform_bits(unet, 8), uniform_bits(unet, 8), a_method="minmax"), search=False)
with observing(unet), torch.no_grad():
    unet(**inputs)
set_backend(unet, "fake")
"""
# QUANT_UNET's layers on the real kernel backend, interpreted (set_backend("kernel") would fall back to fake off CUDA)
KERNEL_BACKEND = """
from quant_utils.quantize import use_kernels
use_kernels(unet)
"""
EXPLAIN = """
with torch.no_grad():
    ex = torch._dynamo.explain(lambda: unet(**inputs).sample)()
print("graphs", ex.graph_count, "breaks", ex.graph_break_count, [r.reason[:200] for r in ex.break_reasons])
"""


def run_interpreted(program: str, *args: str) -> str:
    """Run a Python program (with `args` as its sys.argv[1:]) in a subprocess with the Triton kernels interpreted on
    the CPU; its stdout."""
    proc = subprocess.run([sys.executable, "-c", program, *args], cwd=REPO, env={**os.environ, "TRITON_INTERPRET": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="session")
def tiny_pipe():
    from quant_utils.pipeline import build_pipeline, load_model_config

    return build_pipeline(load_model_config(TINY))


@pytest.fixture(scope="session")
def perf():
    """A performance model fitted on a noiseless synthetic latency table (the serving tests' GPU)."""
    from quant_utils.perf_model import PerfModel, synthetic_latency_frame

    return PerfModel.fit(synthetic_latency_frame(noise=0.0), with_loo=False)


@pytest.fixture(scope="session")
def perf_json(tmp_path_factory, perf):
    return perf.save(tmp_path_factory.mktemp("pm") / "perf_model_synthetic.json")


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("a red bicycle leaning on a wall\na bowl of fruit on a table\na dog running on a beach\n")
    return p


def run_main(script: str, *args: str) -> int:
    """Run a script's main() in this process (imports stay warm: much faster than a subprocess).

    Returns the exit code the script would have (0, or 2 for a user error reported by user_errors)."""
    import importlib.util

    from quant_utils.cli import user_errors

    path = REPO / "scripts" / script
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        with user_errors():
            mod.main(mod.parse_args([str(a) for a in args]))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def dead_pid() -> int:
    """The pid of a process that has exited (a writer killed mid-save)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# --------------------------------------------------------------------------- a quantized tiny UNet (quantize, checkpoint)
PROMPTS = ["a red bicycle leaning on a wall", "a bowl of fruit", "a dog on a beach", "a city street at night"]


def fresh_pipe():
    from quant_utils.pipeline import build_pipeline, load_model_config

    return build_pipeline(load_model_config(TINY))


def unet_inputs(pipe, batch=2) -> dict:
    """The UNet's inputs at the first step of a real pipeline call (what calibration saw)."""
    import torch

    from quant_utils.runtime import Runner

    with torch.no_grad():
        embeds, pooled = Runner(pipe).encode(PROMPTS[-batch:])
    g = torch.Generator().manual_seed(0)
    return dict(sample=torch.randn(batch, 4, 8, 8, generator=g), timestep=torch.tensor([999.0] * batch),
                encoder_hidden_states=embeds,
                added_cond_kwargs={"text_embeds": pooled,
                                   "time_ids": torch.tensor([[64, 64, 0, 0, 64, 64]] * batch, dtype=torch.float32)})


def quantized(pipe, wbits=8, abits=8, **opts):
    """pipe with its UNet quantized to uniform W{wbits}A{abits} (MSE ranges) and calibrated on PROMPTS."""
    from quant_utils.calibrate import calibrate
    from quant_utils.quantize import make_spec, quantize_unet, uniform_bits
    from quant_utils.runtime import Runner

    spec = make_spec(pipe.unet, uniform_bits(pipe.unet, wbits), uniform_bits(pipe.unet, abits) if abits else None, **opts)
    quantize_unet(pipe.unet, spec)
    if abits:
        calibrate(Runner(pipe), PROMPTS, 0, 64, 64, batch_size=4)
    return pipe


@pytest.fixture(scope="session")
def w8a8():
    """(the tiny pipeline with a calibrated W8A8 UNet, a copy of its FP UNet); tests leave it as they found it."""
    import copy

    pipe = fresh_pipe()
    ref = copy.deepcopy(pipe.unet)
    return quantized(pipe), ref


def rel_err(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()
