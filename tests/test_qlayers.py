"""quant_utils/qlayers.py: QuantLayer's fake path (BOS-aware activations) and its side of the kernel contract
(it owns the KernelState and frees its own weights; the backend is a value)."""
import copy

import pytest
import torch
from torch import nn

from conftest import rel_err
from quant_utils.kernels import backend
from quant_utils.qlayers import Backend, QuantLayer


def test_bos_aware_quantization_lowers_error_on_outlier():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(4, 77, 64)
    x[:, 0] *= 100  # the BOS token: a huge outlier, as in CLIP's hidden states
    errs = {}
    for bos in (False, True):
        layer = QuantLayer(copy.deepcopy(lin), 8, 8, bos=bos)
        layer.calibrating = True
        layer(x)
        layer.calibrating = False
        layer.act_quant.finish_calibration()
        with torch.no_grad():
            errs[bos] = rel_err(layer(x)[:, 1:], lin(x)[:, 1:])
    assert errs[True] < 0.2 * errs[False], errs


def test_the_backend_is_a_value():
    """--backend strings parse into Backend; an unknown one is refused; kernel on a CPU falls back to fake, warned."""
    assert Backend("kernel") is Backend.KERNEL and Backend.KERNEL == "kernel" and f"{Backend.FAKE}" == "fake"
    assert Backend.for_device("cpu") is Backend.FAKE and Backend.for_device("cuda:1") is Backend.KERNEL
    layer = QuantLayer(nn.Linear(64, 32), 8, 8)
    with pytest.raises(ValueError, match="expected one of"):
        layer.set_backend("triton")
    with pytest.warns(UserWarning, match="needs CUDA"):
        layer.set_backend("kernel")
    assert layer.backend is Backend.FAKE and layer.kernel_state is None and layer.weight is not None


def test_prepare_frees_weights_and_counts_packed_bytes():
    layer = QuantLayer(nn.Linear(256, 128).half(), 4, 8)
    layer.act_quant.scale.fill_(0.03)
    w_int = layer.w_int.clone()
    assert layer.kernel_state is None and layer.kernel_tensors() == []
    layer.prepare_kernels()
    st = layer.kernel_state
    assert layer.weight is None and layer.bias is None and layer.w_int.numel() == 0
    assert st.path == "int" and st.packed.dtype == torch.uint8 and st.packed.shape == (128, 128)
    # packed W4 + scale, zc, w_scale, bias (float32/int32 per output channel) + the quantizer tensor (8 float32)
    assert backend.weight_bytes(st) == 128 * 128 + 4 * 128 * 4 + 8 * 4
    assert sum(t.numel() * t.element_size() for t in layer.kernel_tensors()) == backend.weight_bytes(st)
    assert torch.equal(backend.unpacked_weight(st), w_int)
    layer.prepare_kernels()  # idempotent
    assert layer.kernel_state is st
    with pytest.raises(RuntimeError, match="prepared for the kernel backend"):  # the fake path has no weights left
        layer(torch.randn(2, 256, dtype=torch.float16))
