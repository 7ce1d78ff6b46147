"""CUDA-only checks of quantized model folders (skipped without a GPU): the images of a UNet loaded from its folder
are bit-identical to the run that saved it on the kernel backend (state filled from the packed bytes), and within
half a pixel level on average on the fake backend (bit-identical on the CPU), with MixDQ's weight_3.66 (2/4/8-bit layers, protected activations, split, BOS)."""
import numpy as np
import pytest
import torch

from conftest import TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("backend", ["kernel", "fake"])
def test_loaded_folder_gives_the_saving_runs_images(backend, tmp_path, monkeypatch):
    from quant_utils.bitconfig import config_dir
    from quant_utils.kernels import packing, tuning
    from quant_utils.mixdq import QuantRequest, quantize_pipeline
    from quant_utils.pipeline import build_pipeline, load_model_config
    from quant_utils.quantize import quant_layers
    from quant_utils.quantized_io import load_quantized
    from quant_utils.runtime import Runner

    # the first candidate tile per shape: no split-K, deterministic sums (the Runners keep an installed Tuning)
    monkeypatch.setattr(tuning, "_current", tuning.Tuning(autotune=False))
    cfg = load_model_config(TINY)
    pipe = build_pipeline(cfg, device="cuda", dtype=torch.float16)
    d = config_dir(cfg.name, "weight").parent
    req = QuantRequest(model_name=cfg.name, config_weight_mp=str(d / "weight" / "weight_3.66.yaml"),
                       config_act_mp=str(d / "act" / "act_7.38.yaml"), act_protect=str(d / "act" / "act_sensitivie_a8_1%.pt"))
    quantize_pipeline(pipe, req, None, ["a cat", "a dog"], 0, 64, 64, 1, backend=backend, save_quantized=tmp_path / "q")
    prompts, seeds = ["a red bicycle", "a bowl of fruit"], [3, 4]
    want = Runner(pipe, layer_plan="off")(prompts, seeds, 64, 64)  # a measured plan may differ between runs
    monkeypatch.setattr(packing, "pack_weight", lambda *a, **k: pytest.fail("loading must not re-pack"))
    unet = load_quantized(tmp_path / "q", "cuda", torch.float16, backend=backend)
    assert {m.backend for _, m in quant_layers(unet)} == {backend}
    got = Runner(build_pipeline(cfg, device="cuda", dtype=torch.float16, unet=unet), layer_plan="off")(prompts, seeds, 64, 64)
    if backend == "kernel":
        assert np.array_equal(got, want)
    else:  # measured on an H200: the fake path on CUDA is not bit-identical after loading (it is on the CPU,
        # tests/test_quantized_io.py); cause not found yet (cuBLAS/cuDNN picks?): held to a small pixel difference
        assert np.abs(got.astype(int) - want).mean() < 0.5, np.abs(got.astype(int) - want).max()
