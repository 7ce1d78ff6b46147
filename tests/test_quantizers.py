import numpy as np
import pytest
import torch

from quant_utils.quantizers import ActQuantizer, dequantize_weight, fake_quant, quantize_weight, qrange, weight_qparams


def np_weight_quant(w, bits, symmetric):
    """NumPy reference of per-output-channel min-max quantization."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    lo, hi = flat.min(1), flat.max(1)
    if symmetric:
        scale, zp = np.maximum(np.abs(lo), np.abs(hi)) / qmax, np.zeros_like(lo)
    else:
        lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
        scale = (hi - lo) / (qmax - qmin)
        zp = np.clip(qmin - np.round(lo / scale), qmin, qmax)
    q = np.clip(np.round(flat / scale[:, None]) + zp[:, None], qmin, qmax)
    return q.reshape(w.shape), scale, zp


def sqnr_db(ref, x):
    return 10 * torch.log10(ref.pow(2).mean() / (ref - x).pow(2).mean()).item()


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("shape", [(16, 40), (8, 4, 3, 3)])
def test_weight_minmax_matches_numpy(bits, symmetric, shape):
    w = torch.randn(shape) * torch.rand(shape[0]).view(-1, *[1] * (len(shape) - 1))  # per-channel ranges differ
    scale, zp = weight_qparams(w, bits, symmetric, "minmax")
    q = quantize_weight(w, scale, zp, bits)
    q_ref, s_ref, z_ref = np_weight_quant(w.numpy(), bits, symmetric)
    np.testing.assert_allclose(scale.numpy(), s_ref, rtol=1e-6)
    np.testing.assert_array_equal(zp.numpy(), z_ref)
    assert np.abs(q.numpy() - q_ref).max() <= 1  # float32 vs float64 rounding ties only
    assert (q.numpy() != q_ref).mean() < 1e-3
    qmin, qmax = qrange(bits)
    assert q.dtype == torch.int8 and q.min() >= qmin and q.max() <= qmax


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_mse_search_never_worse_than_minmax(bits):
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(0))  # its own seed: not the order tests run in
    w[:, 0] *= 20  # an outlier column makes clipping worthwhile
    errs = {}
    for method in ("minmax", "mse"):
        s, z = weight_qparams(w, bits, True, method)
        errs[method] = (dequantize_weight(quantize_weight(w, s, z, bits), s, z, torch.float32) - w).pow(2).mean()
    assert errs["mse"] <= errs["minmax"] + 1e-9
    if bits <= 4:
        assert errs["mse"] < 0.9 * errs["minmax"]


def test_error_falls_as_bits_rise():
    w = torch.randn(64, 128)
    sq = []
    for bits in (2, 4, 6, 8):
        s, z = weight_qparams(w, bits, True, "mse")
        sq.append(sqnr_db(w, dequantize_weight(quantize_weight(w, s, z, bits), s, z, torch.float32)))
    assert sq == sorted(sq) and sq[-1] > 38  # ~6 dB per bit; 8-bit well above 38 dB


def test_fake_quant_round_trip_and_clipping():
    scale, zp = torch.tensor(0.5), torch.tensor(3.0)
    x = torch.tensor([-100.0, -1.0, 0.0, 0.74, 1.0, 100.0])
    y = fake_quant(x, scale, zp, 8)
    # grid points are (q - 3) * 0.5 with q in [-128, 127]
    np.testing.assert_allclose(y.numpy(), [(-128 - 3) * 0.5, -1.0, 0.0, 0.5, 1.0, (127 - 3) * 0.5])


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_activation_calibration_methods(method):
    torch.manual_seed(0)
    q = ActQuantizer(8, method)
    for _ in range(4):
        q.observe(torch.relu(torch.randn(64, 256)) * 3)  # skewed, non-negative like post-activation inputs
    q.finish_calibration()
    x = torch.relu(torch.randn(64, 256)) * 3
    assert q.calibrated and q.scale > 0 and float(q.zero_point).is_integer()
    assert sqnr_db(x, q(x)) > 30
    assert q(x).min() >= -1e-6  # zero is exactly representable: nothing negative appears


def test_activation_quantizer_needs_data():
    with pytest.raises(RuntimeError, match="no data"):
        ActQuantizer(8).finish_calibration()


def test_quantizers_that_see_the_same_inputs_calibrate_alike():
    """Subsamples are seeded per call, not drawn from the global RNG: an attention's q/k/v quantizers (the same inputs,
    other layers' draws in between) keep the same values and reach the same range, so their GEMMs fuse exactly."""
    torch.manual_seed(0)
    xs = [torch.randn(300_000) * (1 + i) for i in range(3)]  # more values than a call keeps: subsampled
    a, b = ActQuantizer(8, "mse"), ActQuantizer(8, "mse")
    for x in xs:
        a.observe(x)
        torch.randn(7)  # another layer's random draw between the two
        b.observe(x)
    assert all(torch.equal(s, t) for s, t in zip(a._samples, b._samples))
    assert a._samples[0].numel() < xs[0].numel()
    a.finish_calibration(), b.finish_calibration()
    assert float(a.scale) == float(b.scale) and float(a.zero_point) == float(b.zero_point)
