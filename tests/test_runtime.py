"""The serving Runner (quant_utils/runtime.py): exec resolution, decoders, denoise/decode split, dynamic-shape
compiled regions sharing graphs across buckets."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO


def test_auto_exec_is_compile_on_cuda_and_eager_on_a_cpu():
    from quant_utils.runtime import resolve_exec

    assert resolve_exec("auto", "cpu") == "eager"
    assert resolve_exec("auto", "cuda") == "compile"
    assert resolve_exec("graph", "cpu") == "graph"  # Runner then refuses it without CUDA
    with pytest.raises(ValueError, match="exec_mode"):
        resolve_exec("fast", "cpu")


def test_runner_labels_and_rejects(tiny_pipe):
    from quant_utils.runtime import Runner

    run = Runner(tiny_pipe, "auto")
    assert (run.exec_mode, run.vae_kind, run.vae_exec) == ("eager", "fp16", "eager")
    with pytest.raises(ValueError, match="compile_shapes"):
        Runner(tiny_pipe, "eager", compile_shapes="sometimes")
    with pytest.raises(ValueError, match="compile_regions='layers'"):
        Runner(tiny_pipe, "eager", compile_regions="layers")
    with pytest.raises(ValueError, match="vae_conv_out='nwhc'"):
        Runner(tiny_pipe, "eager", vae_conv_out="nwhc")
    assert Runner(tiny_pipe, "eager").vae_conv_out == "nchw"  # auto: NHWC only for a decode compiled on CUDA
    with pytest.raises(ValueError, match="vae_fuse='yes'"):
        Runner(tiny_pipe, "eager", vae_fuse="yes")
    assert Runner(tiny_pipe, "eager", vae_fuse="on").vae_fused_blocks == 0  # the FP16 decoder: no int8 convs to fuse
    with pytest.raises(ValueError, match="vae_upsample='bilinear'"):
        Runner(tiny_pipe, "eager", vae_upsample="bilinear")
    sub = Runner(tiny_pipe, "eager", vae_upsample="subpixel")  # the FP16 decoder's upsamplers: transposed convs
    assert (sub.vae_upsample, sub.vae_subpixel) == ("subpixel", len(tiny_pipe.vae.decoder.up_blocks) - 1)
    assert Runner(tiny_pipe, "eager").vae_upsample == "nearest"  # auto; and the shared decoder switched back
    assert not any(type(m).__name__ == "SubpixelUpsample2D" for m in tiny_pipe.vae.decoder.modules())


def test_vae_fuse_auto_is_the_int8_decoder_on_cuda():
    from quant_utils.decoders import wants_fused_blocks

    assert wants_fused_blocks("auto", "int8", on_cuda=True)
    assert not wants_fused_blocks("auto", "int8", on_cuda=False) and not wants_fused_blocks("auto", "fp16", True)
    assert wants_fused_blocks("on", "fp16", on_cuda=False) and not wants_fused_blocks("off", "int8", True)


def test_decoder_conv_out_auto_is_nhwc_for_the_compiled_int8_decoder_only(monkeypatch):
    """auto: channels_last int8 conv outputs where measured faster (the int8 decoder compiled on CUDA), NCHW
    elsewhere; an explicit layout is kept; MIXDQ_CONV_NHWC=1 overrides everything."""
    from quant_utils.runtime import decoder_conv_out

    monkeypatch.delenv("MIXDQ_CONV_NHWC", raising=False)
    assert decoder_conv_out("auto", "int8", compiled_on_cuda=True) == "nhwc"
    assert decoder_conv_out("auto", "int8", compiled_on_cuda=False) == "nchw"
    assert decoder_conv_out("auto", "fp16", compiled_on_cuda=True) == "nchw"
    assert decoder_conv_out("nchw", "int8", compiled_on_cuda=True) == "nchw"
    assert decoder_conv_out("nhwc", "int8", compiled_on_cuda=False) == "nhwc"
    with pytest.raises(ValueError, match="vae_conv_out='NHWC'"):
        decoder_conv_out("NHWC", "int8", compiled_on_cuda=True)
    monkeypatch.setenv("MIXDQ_CONV_NHWC", "1")
    assert decoder_conv_out("nchw", "int8", compiled_on_cuda=False) == "nhwc"


def test_runner_reports_the_conv_layout_that_runs(tiny_pipe, monkeypatch):
    """MIXDQ_CONV_NHWC=1 makes every int8 conv write channels_last, whatever --vae_conv_out asked: the Runner (and so
    bench_e2e's vae_conv_out column) says nhwc then."""
    from quant_utils.runtime import Runner

    assert Runner(tiny_pipe, "eager", vae_conv_out="nhwc").vae_conv_out == "nhwc"
    monkeypatch.setenv("MIXDQ_CONV_NHWC", "1")
    assert Runner(tiny_pipe, "eager", vae_conv_out="nchw").vae_conv_out == "nhwc"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            Runner(tiny_pipe, "compile")
    with pytest.raises(ValueError, match="vae_exec"):
        Runner(tiny_pipe, "eager", vae_exec="nchw")


def test_compile_regions_auto_gives_blocks_to_kernel_unets_only(tiny_pipe, monkeypatch):
    """`auto` (the default): blocks for a UNet with low-bit kernel layers (a shorter warm first call at the same image
    time, H200), transformers for an FP16 UNet (faster at 1024x4); an explicit choice is kept."""
    from quant_utils import runtime

    assert runtime.resolve_regions("auto", tiny_pipe.unet) == "transformers"
    assert runtime.Runner(tiny_pipe, "eager").compile_regions == "transformers"
    monkeypatch.setattr(runtime, "kernel_layers", lambda unet: [("down_blocks.0.attn", unet)])
    assert runtime.resolve_regions("auto", tiny_pipe.unet) == "blocks"
    assert runtime.resolve_regions("transformers", tiny_pipe.unet) == "transformers"
    with pytest.raises(ValueError, match="compile_regions='layers'"):
        runtime.resolve_regions("layers", tiny_pipe.unet)


def test_static_nchw_decode_compiles_with_layout_optimisation_off(tiny_pipe, monkeypatch):
    """--vae_exec static-nchw: the decoder compiled per bucket with Inductor's layout optimisation off (its convs
    stay NCHW); the other static/dynamic decodes compile with Inductor's defaults. One compiled decode per kind."""
    from quant_utils import runtime

    calls = []
    monkeypatch.setattr(runtime.torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    monkeypatch.setattr(runtime, "_COMPILED_DECODES", {})
    for kind in ("static", "static-nchw", "dynamic", "static-nchw"):
        runtime.compiled_decode(tiny_pipe.vae, kind)
    assert calls == [{"dynamic": False}, {"dynamic": False, "options": {"layout_optimization": False}},
                     {"dynamic": True}]


def test_a_cuda_runner_owns_the_kernels_tuning(monkeypatch, capsys):
    """On CUDA the Runner installs the kernels' Tuning: the standard one (loaded and named once per process) unless
    one is installed already or given; a CPU Runner leaves the kernels alone. (A stand-in pipeline on 'cuda':
    constructing a Runner launches nothing.)"""
    from types import SimpleNamespace

    from quant_utils.kernels import tuning
    from quant_utils.runtime import Runner

    monkeypatch.setattr(tuning, "_current", None)
    monkeypatch.setattr(tuning, "gpu_name", lambda: "NVIDIA H200")
    monkeypatch.setattr(tuning, "capability", lambda: "sm_90")
    monkeypatch.setenv("MIXDQ_TUNING_CACHE", "none")
    monkeypatch.delenv("MIXDQ_TUNING_FILE", raising=False)

    def pipe(device):
        return SimpleNamespace(unet=SimpleNamespace(device=torch.device(device), dtype=torch.float16),
                               vae=SimpleNamespace(dtype=torch.float16))

    Runner(pipe("cpu"), "eager")
    assert not tuning.tuning_installed()
    Runner(pipe("cuda"), "eager")
    standard = tuning.current_tuning()
    assert standard.sources and all("results/kernels_tuning_" in s for s in standard.sources)
    assert capsys.readouterr().out.count("[kernels]") == len(standard.sources)
    Runner(pipe("cuda"), "eager")  # a second Runner keeps it, and says nothing
    assert tuning.current_tuning() is standard and "[kernels]" not in capsys.readouterr().out
    mine = tuning.Tuning(autotune=False)
    Runner(pipe("cuda"), "eager", tuning=mine)
    assert tuning.current_tuning() is mine


def test_call_is_denoise_then_decode(tiny_pipe):
    """__call__ = decode(denoise): the latents a decoder calibrates on are the ones the images come from."""
    from quant_utils.runtime import Runner, decode_images

    run = Runner(tiny_pipe)
    z = run.denoise(["a cat", "a dog"], [1, 2], 64, 64)
    assert z.shape == (2, 4, 8, 8) and z.dtype == torch.float32
    img = run(["a cat", "a dog"], [1, 2], 64, 64)
    with torch.no_grad():
        ref = (decode_images(tiny_pipe.vae, z).float().permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(img, ref)
    assert img.flags["C_CONTIGUOUS"] and img.dtype == np.uint8  # what the service's encoders read row by row
    from quant_utils.runtime import to_host_images

    kept = run(["a cat", "a dog"], [1, 2], 64, 64, keep_on_device=True)  # for an encoder where the images are
    assert isinstance(kept, torch.Tensor) and kept.shape == (2, 3, 64, 64) and kept.dtype == torch.uint8
    assert np.array_equal(to_host_images(kept), img)


DYNAMIC_REGIONS = """
import torch
from torch._dynamo.utils import counters
from quant_utils import kernel_bench as kb
from quant_utils.pipeline import build_pipeline, load_model_config
from quant_utils.runtime import compile_unet_regions
unet = build_pipeline(load_model_config("configs/stable-diffusion/sdxl_turbo_tiny.yaml"), dtype=torch.float16).unet
buckets = [(1, 64), (2, 64), (3, 64), (2, 96), (1, 96), (4, 128)]
with torch.no_grad():
    refs = [unet(**kb.unet_inputs(unet, b, r, seed=b)).sample for b, r in buckets]
    compile_unet_regions(unet, backend="eager", dynamic=True)
    for (b, r), ref in zip(buckets, refs):
        out = unet(**kb.unet_inputs(unet, b, r, seed=b)).sample
        print(b, r, counters["stats"]["unique_graphs"], bool(torch.equal(out, ref)))
"""


def test_dynamic_compiled_regions_serve_every_bucket_with_two_compiles():
    """compile_shapes=dynamic: each block is traced for batch 1 (torch specialises size 1) and once with symbolic
    batch/height/width; every later bucket (other batches, other resolutions) reuses those graphs."""
    proc = subprocess.run([sys.executable, "-c", DYNAMIC_REGIONS], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln.split() for ln in proc.stdout.splitlines() if ln[:1].isdigit()]
    graphs = [int(ln[2]) for ln in lines]
    assert all(ln[3] == "True" for ln in lines), proc.stdout
    assert graphs[1] == 2 * graphs[0] and graphs[-1] == graphs[1], graphs  # no graph after the second bucket


def test_compile_counters_say_what_a_first_call_compiled():
    """The first call of a compiled function adds a Dynamo graph and Dynamo seconds; a second call adds nothing."""
    import torch

    from quant_utils.runtime import compile_counters

    fn = torch.compile(lambda x: torch.sin(x) * 2 + 1, backend="eager")
    before = compile_counters()
    fn(torch.ones(3))
    after = compile_counters()
    fn(torch.ones(3))
    assert after["graphs"] == before["graphs"] + 1 and after["dynamo_s"] > before["dynamo_s"]
    assert compile_counters() == after


def test_bench_trace_times_each_region_choice_in_a_fresh_process(tmp_path):
    """scripts/utils/bench_trace.py on the tiny UNet: one row per (mode, regions, compile backend), each from its own
    process (its counters start at zero), with the regions and graphs compile_unet_regions makes and the provenance
    a CPU measurement needs."""
    from conftest import TINY, run_main
    from quant_utils.csvio import read_csv, read_provenance

    out = tmp_path / "trace.csv"
    assert run_main("utils/bench_trace.py", "--config", TINY, "--modes", "fp16", "--backends", "eager",
                    "--out", out) == 0
    df = read_csv(out).set_index("regions")
    assert list(df.columns) == ["mode", "compile_backend", "modules", "graphs", "first_s", "second_s", "trace_s",
                                "dynamo_bytecode_s", "backend_s", "guards_s"]
    assert df.loc["transformers", "modules"] == 28 and df.loc["blocks", "modules"] == 56
    assert (df["graphs"] > 0).all() and (df["graphs"] < df["modules"]).all() and (df["dynamo_bytecode_s"] > 0).all()
    assert ((df["trace_s"] - (df["first_s"] - df["second_s"])).abs() <= 0.011).all()  # each rounded to 0.01 s
    meta = read_provenance(out)
    assert meta["device"].startswith("cpu: ") and meta["backend"].startswith("fp16: none") and "random" in meta["weights"]
