"""Fused attention projections (quant_utils/fusion.py): the same UNet output with one GEMM per attention input."""
import copy

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
    attn.to_v.w_bits = 4
    assert why_not_fusable([attn.to_q, attn.to_v]) == "different weight bits"


def test_prepared_kernel_layers_fuse_from_their_packed_bytes(w8a8):
    """Layers already prepared for the kernel backend (on a CPU their forward is the kernels' integer reference) fuse
    from their packed weights, and the fused layer is prepared again."""
    import warnings

    from quant_utils.qlayers import Backend
    from quant_utils.quantize import quant_layers

    pipe, _ = w8a8
    unet = copy.deepcopy(pipe.unet)
    for _, m in quant_layers(unet):
        m.prepare_kernels()
        m.backend = Backend.KERNEL
    inputs = unet_inputs(pipe)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "kernel backend on a CPU: computing the integer reference"
        ref = unet(**inputs).sample
        done = fuse_qkv(unet)
        out = unet(**inputs).sample
    assert done["self"] > 0 and done["cross"] > 0 and not done["kept"]
    qkv = next(a for _, a in attentions(unet) if not a.is_cross_attention).to_qkv
    assert qkv.backend is Backend.KERNEL and qkv.kernel_state.path == "int" and qkv.weight is None
    assert rel_err(out, ref) < 1e-5
