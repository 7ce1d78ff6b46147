"""quant_utils/kernels/reference.py, the integer-exact oracle: the contract's activation quantization, and the
linear and conv references against float64 dequantized math."""
import torch
import torch.nn.functional as F

from kernel_selfcheck import rand_codes
from quant_utils.kernels import reference as ref


def test_quantize_act_matches_contract_formula():
    aq = ref.ActQuant(0.0371, -5, 8)
    x = torch.randn(4096, dtype=torch.float16) * 4
    q = ref.quantize_act(x, aq)
    expect = torch.clamp(torch.round(x.double() / torch.tensor(aq.scale, dtype=torch.float32).double()) - 5, -128, 127)
    assert q.dtype == torch.int8
    assert (q.double() - expect).abs().max() <= 1  # float32 vs float64 division may flip an exact .5
    assert (q.double() == expect).double().mean() > 0.999


def test_linear_reference_equals_float64_dequantized_math():
    aq = ref.ActQuant(0.05, 3, 8)
    q = rand_codes((7, 96), 8, seed=3)
    w = rand_codes((40, 96), 4, seed=4)
    ws, bias = torch.rand(40, dtype=torch.float64) * 0.01, torch.randn(40, dtype=torch.float64)
    y = ref.linear_int(q, w, ws, aq, bias)
    deq = ((q.double() - aq.zero) * aq.scale) @ (w.double() * ws[:, None]).t() + bias
    assert torch.allclose(y, deq, rtol=1e-12, atol=1e-12)


def test_conv_reference_pads_with_the_zero_point_and_splits():
    a1, a2 = ref.ActQuant(0.05, 3, 8), ref.ActQuant(0.2, -9, 6)
    x = torch.randn(2, 48, 5, 5, dtype=torch.float64)
    q = ref.quantize_act_split(x, a1, a2, 32)
    w = rand_codes((8, 48, 3, 3), 6, seed=5)
    ws, bias = torch.rand(8, dtype=torch.float64) * 0.01, torch.randn(8, dtype=torch.float64)
    y = ref.conv_int(q, w, ws, a1, a2, 32, bias, 1, 1)
    xq = torch.cat([(q[:, :32].double() - a1.zero) * a1.scale, (q[:, 32:].double() - a2.zero) * a2.scale], dim=1)
    expect = F.conv2d(xq, w.double() * ws.view(-1, 1, 1, 1), bias, 1, 1)  # zero padding of the dequantized input
    assert torch.allclose(y, expect, rtol=1e-12, atol=1e-12)
