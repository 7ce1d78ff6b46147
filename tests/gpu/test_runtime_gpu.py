"""CUDA-only checks of the serving runtime (skipped without a GPU): CUDA-graph and torch.compile execution
give the eager images, and graph replays pick up new inputs (no stale static buffers)."""
import numpy as np
import pytest
import torch

from conftest import TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_pipe():
    from quant_utils.pipeline import build_pipeline, load_model_config

    return build_pipeline(load_model_config(TINY), device="cuda", dtype=torch.float16)


def _with_own_unet(pipe):
    """The pipeline's parts with a copy of its UNet (compile mode compiles the UNet's blocks in place)."""
    import copy
    from types import SimpleNamespace

    parts = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "vae", "scheduler")
    return SimpleNamespace(**{k: getattr(pipe, k) for k in parts}, unet=copy.deepcopy(pipe.unet))


@pytest.mark.parametrize("exec_mode", ["graph", "compile"])
def test_graph_and_compile_match_eager(cuda_pipe, exec_mode):
    from quant_utils.runtime import Runner

    eager, fast = Runner(cuda_pipe, "eager"), Runner(_with_own_unet(cuda_pipe), exec_mode)
    for prompts, seeds in ((["a cat", "a dog"], [1, 2]), (["a bird", "a boat"], [3, 4])):  # second call: replay
        ref = eager(prompts, seeds, 64, 64).astype(int)
        out = fast(prompts, seeds, 64, 64).astype(int)
        assert np.abs(out - ref).max() <= 2, exec_mode  # fp16 rounding of fused kernels only
    assert len(fast.graphs.graphs) == 3  # text, unet, vae captured once for this bucket


@pytest.mark.parametrize("exec_mode", ["graph", "compile"])
def test_quantized_kernel_backend_matches_fake(cuda_pipe, monkeypatch, exec_mode):
    from quant_utils.calibrate import calibrate
    from quant_utils.quantize import make_spec, quantize_unet, set_backend, uniform_bits
    from quant_utils.kernels import launch
    from quant_utils.runtime import Runner

    monkeypatch.setattr(launch, "TUNING", False)  # first candidate tile per shape: fewer Triton compiles, same math
    pipe = _with_own_unet(cuda_pipe)
    quantize_unet(pipe.unet, make_spec(pipe.unet, uniform_bits(pipe.unet, 8), uniform_bits(pipe.unet, 8)))
    calibrate(Runner(pipe), ["a cat", "a dog"], 0, 64, 64)
    fake = Runner(pipe)(["a cat"], [7], 64, 64).astype(float)
    set_backend(pipe.unet, "kernel")
    kernel = Runner(pipe, exec_mode, vae_exec="eager")(["a cat"], [7], 64, 64).astype(float)
    # same integers; fp16 epilogue rounding only (compiled: quantized from fp32 norm/GELU outputs, codes at
    # rounding boundaries may move by one)
    assert np.abs(kernel - fake).mean() < 2.0, exec_mode
