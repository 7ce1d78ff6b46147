"""Fused attention projections (quant_utils/fusion.py): the same UNet output with one GEMM per attention input."""
import copy

import pytest

import torch
from torch import nn

from conftest import rel_err, unet_inputs
from quant_utils.fusion import fuse_qkv, why_not_fusable
from quant_utils.qlayers import QuantLayer


def attentions(unet):
    from diffusers.models.attention_processor import Attention

    return [(n, m) for n, m in unet.named_modules() if isinstance(m, Attention)]


def test_fp16_unet_fuses_like_diffusers(tiny_pipe):
    unet = copy.deepcopy(tiny_pipe.unet)
    inputs = unet_inputs(tiny_pipe)
    with torch.no_grad():
        ref = unet(**inputs).sample
        n_attn = len(attentions(unet))
        done = fuse_qkv(unet)
        assert done["self"] + done["cross"] == n_attn and not done["kept"]
        for _, a in attentions(unet):
            assert a.fused_projections and not hasattr(a, "to_k") and not hasattr(a, "to_v")
            assert hasattr(a, "to_kv" if a.is_cross_attention else "to_qkv")
        assert rel_err(unet(**inputs).sample, ref) < 1e-5
        assert fuse_qkv(unet) == {"self": 0, "cross": 0, "kept": {}}  # idempotent


def test_quantized_unet_fuses_exactly(w8a8):
    pipe, _ = w8a8
    unet = copy.deepcopy(pipe.unet)
    inputs = unet_inputs(pipe)
    with torch.no_grad():
        ref = unet(**inputs).sample
        layers_before = sum(isinstance(m, QuantLayer) for m in unet.modules())
        done = fuse_qkv(unet)
        n_self = sum(not a.is_cross_attention for _, a in attentions(unet))
        assert done["self"] == n_self and done["cross"] == len(attentions(unet)) - n_self and not done["kept"]
        # three layers become one per self-attention, two become one per cross-attention
        assert sum(isinstance(m, QuantLayer) for m in unet.modules()) == layers_before - 2 * done["self"] - done["cross"]
        qkv = next(a for _, a in attentions(unet) if not a.is_cross_attention).to_qkv
        assert isinstance(qkv, QuantLayer) and qkv.out_features == 3 * qkv.in_features and qkv.w_int.shape[0] == qkv.out_features
        kv = next(a for _, a in attentions(unet) if a.is_cross_attention).to_kv
        assert kv.bos  # cross-attention K/V keep token 0 unquantized, fused or not
        assert rel_err(unet(**inputs).sample, ref) < 1e-5  # the same quantized model


def test_layers_that_differ_are_kept(w8a8):
    pipe, _ = w8a8
    unet = copy.deepcopy(pipe.unet)
    name, attn = next((n, a) for n, a in attentions(unet) if not a.is_cross_attention)
    attn.to_k.act_quant.scale.mul_(1.5)
    done = fuse_qkv(unet)
    assert done["kept"] == {name: "different activation quantizer"} and hasattr(attn, "to_q")
    assert why_not_fusable([attn.to_q, nn.Linear(4, 4)]) == "mixed quantized and FP layers"
    assert why_not_fusable([nn.Linear(4, 4), nn.Linear(4, 4, bias=False)]) == "some with a bias, some without"
    attn.to_v.w_bits = 4
    assert why_not_fusable([attn.to_q, attn.to_v]) == "different weight bits"


@pytest.mark.parametrize("wbits", [8, 4])
def test_prepared_kernel_layers_fuse_from_their_packed_bytes(w8a8, wbits):
    """Layers already prepared for the kernel backend (on a CPU their forward is the kernels' integer reference) fuse
    from their packed weights (8-bit and 4-bit packing), and the fused layer is prepared again."""
    import warnings

    from conftest import fresh_pipe, quantized
    from quant_utils.qlayers import Backend
    from quant_utils.quantize import use_kernels

    pipe = w8a8[0] if wbits == 8 else quantized(fresh_pipe(), wbits=wbits)
    unet = copy.deepcopy(pipe.unet)
    use_kernels(unet)
    inputs = unet_inputs(pipe)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "kernel backend on a CPU: computing the integer reference"
        ref = unet(**inputs).sample
        done = fuse_qkv(unet)
        out = unet(**inputs).sample
    assert done["self"] > 0 and done["cross"] > 0 and not done["kept"]
    qkv = next(a for _, a in attentions(unet) if not a.is_cross_attention).to_qkv
    assert qkv.backend is Backend.KERNEL and qkv.kernel_state.path == "int" and qkv.weight is None
    assert qkv.w_bits == wbits and qkv.kernel_state.bits == wbits
    assert rel_err(out, ref) < 1e-5


def test_the_runner_fuses_when_compiled_and_on_request(tiny_pipe, w8a8):
    import numpy as np

    from quant_utils.fusion import fusion_label, wants_fusion
    from quant_utils.mixdq import pipeline_view
    from quant_utils.runtime import Runner

    fp16, quant = tiny_pipe.unet, w8a8[0].unet
    assert wants_fusion("auto", True, fp16) and wants_fusion("auto", True, quant)
    assert not wants_fusion("auto", False, fp16) and not wants_fusion("auto", False, quant)
    assert wants_fusion("on", False, quant) and not wants_fusion("off", True, fp16)
    with pytest.raises(ValueError, match="fuse_qkv"):
        wants_fusion("yes", True, fp16)
    ref_runner = Runner(tiny_pipe, "eager")  # auto, eager: left as it is
    assert ref_runner.fused is None and fusion_label(ref_runner.fused) == "none"
    ref = ref_runner(["a cat"], [5], 64, 64).astype(int)
    view = pipeline_view(tiny_pipe, copy.deepcopy(fp16))
    fused = Runner(view, "eager", fuse_qkv="on")
    assert fused.fused["self"] > 0 and "attentions fused" in fusion_label(fused.fused)
    assert np.abs(fused(["a cat"], [5], 64, 64).astype(int) - ref).max() <= 1
    with pytest.raises(ValueError, match="fuse_qkv"):
        Runner(view, "eager", fuse_qkv="maybe")


def test_a_fused_fp16_unet_is_unfused_before_it_is_quantized(tiny_pipe):
    """A service builds its FP16 Runner first (fusing the loaded UNet in place), then quantized copies of that UNet:
    quantization sees the unfused layers its bit configs name."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from quant_utils.fusion import unfuse_qkv
    from quant_utils.mixdq import pipeline_view, quantized_copy

    unet = copy.deepcopy(tiny_pipe.unet)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    inputs = unet_inputs(tiny_pipe)
    with torch.no_grad():
        ref = unet(**inputs).sample
        fuse_qkv(unet)
        assert unfuse_qkv(unet) == len(attentions(unet)) and unfuse_qkv(unet) == 0
        assert unet.state_dict().keys() == before.keys()
        assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
        assert all(type(a.processor) is AttnProcessor2_0 for _, a in attentions(unet))
        assert torch.equal(unet(**inputs).sample, ref)
    fused = pipeline_view(tiny_pipe, copy.deepcopy(tiny_pipe.unet))
    fuse_qkv(fused.unet)
    from quant_utils.quantize import make_spec, quantize_unet, uniform_bits

    with pytest.raises(ValueError, match="unfuse_qkv"):
        quantize_unet(copy.deepcopy(fused.unet), make_spec(unet, uniform_bits(unet, 8), uniform_bits(unet, 8)))
    q, _ = quantized_copy(fused, "w8a8", "sdxl_turbo_tiny", None, ["a cat"], 0, 64, 64, 1)
    a = next(a for _, a in attentions(q.unet) if not a.is_cross_attention)
    assert isinstance(a.to_q, QuantLayer) and not getattr(a, "fused_projections", False)
    fuse_qkv(q.unet)
    with pytest.raises(ValueError, match="quantized"):
        unfuse_qkv(q.unet)


def test_a_fused_quantized_unet_is_not_written_under_fused_names(w8a8, tmp_path):
    """A compiled Runner fuses a quantized UNet in place (--fuse_qkv auto): its calibration and its quantized folder
    would name to_qkv/to_kv, which no bit config or loader knows; both writers refuse, and write nothing."""
    from quant_utils.checkpoint import save_quant_params
    from quant_utils.quantized_io import save_quantized

    unet = copy.deepcopy(w8a8[0].unet)
    fuse_qkv(unet)
    with pytest.raises(ValueError, match="fused in place"):
        save_quant_params(unet, tmp_path / "ckpt.pth")
    with pytest.raises(ValueError, match="fused in place"):
        save_quantized(unet, tmp_path / "packed")
    assert not list(tmp_path.iterdir())


def test_fused_attention_traces_under_dynamo(w8a8):
    """The fused quantized UNet through torch.compile's tracer (regional, eager backend: what the compiled serving
    path traces, without a GPU): the same output."""
    from quant_utils.runtime import compile_unet_regions

    pipe, _ = w8a8
    unet = copy.deepcopy(pipe.unet)
    inputs = unet_inputs(pipe)
    with torch.no_grad():
        ref = unet(**inputs).sample
        fuse_qkv(unet)
        assert compile_unet_regions(unet, backend="eager") > 0
        assert rel_err(unet(**inputs).sample, ref) < 1e-5
