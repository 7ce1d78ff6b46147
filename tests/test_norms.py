"""The split and triton GroupNorms (quant_utils/norms.py): PyTorch's GroupNorm in numbers, switched in place, chosen by
the Runner; the Triton statistics kernel in the interpreter."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import run_interpreted
from quant_utils.norms import (_FORMS, SplitGroupNorm, TritonGroupNorm, decoder_group_norm, group_norm_split,
                               use_group_norm)


def group_norm_kind(model: nn.Module) -> str:
    """A GROUP_NORMS kind, "mixed" or "none": how the GroupNorms of `model` compute now."""
    kinds = {k for m in model.modules() if isinstance(m, nn.GroupNorm) for k, cls in _FORMS.items() if type(m) is cls}
    return "none" if not kinds else "mixed" if len(kinds) > 1 else kinds.pop()


@pytest.mark.parametrize("shape,groups", [((2, 64, 32, 32), 32), ((1, 12, 9, 7), 4), ((3, 6, 10), 3), ((2, 8, 4, 4, 4), 2)])
def test_split_matches_group_norm(shape, groups):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * 3 + 5  # a large mean: the combine must not cancel
    w, b = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
    for weight, bias in [(w, b), (None, None)]:
        ref = F.group_norm(x, groups, weight, bias, 1e-6)
        out = group_norm_split(x, groups, weight, bias, 1e-6)
        assert out.dtype == x.dtype and out.shape == x.shape
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


def test_split_in_half_precision_keeps_float32_statistics():
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 32, 64, 64, generator=g) * 4 + 20).half()
    w, b = torch.randn(32, generator=g).half(), torch.randn(32, generator=g).half()
    out = group_norm_split(x, 8, w, b, 1e-6)
    ref = F.group_norm(x.float(), 8, w.float(), b.float(), 1e-6)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=1e-2)  # fp16 output rounding only


def test_use_group_norm_switches_in_place_and_back():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.GroupNorm(4, 16), nn.SiLU(), nn.GroupNorm(2, 16, affine=False))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 20, 20)
    ref = model(x)
    assert group_norm_kind(model) == "native"
    assert use_group_norm(model, "split") == 2 and group_norm_kind(model) == "split"
    assert use_group_norm(model, "split") == 0  # already split
    assert all(type(m) is SplitGroupNorm for m in model if isinstance(m, nn.GroupNorm))
    assert model.state_dict().keys() == state.keys()
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    h = model[0](x)  # channels_last (as Inductor lays out conv outputs): the same numbers
    torch.testing.assert_close(model[1](h.to(memory_format=torch.channels_last)), model[1](h), atol=1e-5, rtol=1e-5)
    assert use_group_norm(model, "triton") == 2 and group_norm_kind(model) == "triton"
    assert all(type(m) is TritonGroupNorm for m in model if isinstance(m, nn.GroupNorm))
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)  # on a CPU: torch's statistics, the split form
    assert use_group_norm(model, "native") == 2 and group_norm_kind(model) == "native"
    assert group_norm_kind(nn.Linear(2, 2)) == "none"
    with pytest.raises(ValueError, match="group_norm"):
        use_group_norm(model, "auto")


def test_decoder_group_norm_auto_is_triton_affine_where_measured_fastest():
    """Compiled on CUDA: the FP16 decoder, and the int8 decoder whose convs write channels_last (with NCHW outputs the
    Triton forms were slower); nothing uncompiled (unmeasured)."""
    assert decoder_group_norm("auto", "fp16", compiled_on_cuda=True) == "triton-affine"
    assert decoder_group_norm("auto", "fp16", compiled_on_cuda=False) == "native"
    assert decoder_group_norm("auto", "int8", compiled_on_cuda=True) == "native"  # NCHW conv outputs
    assert decoder_group_norm("auto", "int8", compiled_on_cuda=True, conv_out="nhwc") == "triton-affine"
    assert decoder_group_norm("auto", "int8", compiled_on_cuda=False, conv_out="nhwc") == "native"
    assert decoder_group_norm("auto", "tiny", compiled_on_cuda=True, conv_out="nhwc") == "native"
    assert decoder_group_norm("split", "int8", compiled_on_cuda=True) == "split"  # an explicit form is kept
    with pytest.raises(ValueError, match="vae_group_norm"):
        decoder_group_norm("fast", "fp16", compiled_on_cuda=True)


def test_runner_applies_the_group_norm_to_unet_and_decoder(tiny_pipe):
    from quant_utils.runtime import Runner

    try:
        native = Runner(tiny_pipe, "eager")
        assert native.group_norm == "native" and group_norm_kind(tiny_pipe.unet) == "native"
        ref = native(["a cat"], [3], 64, 64)
        assert native.vae_group_norm == "native" and group_norm_kind(tiny_pipe.vae) == "native"  # auto, on the CPU
        split = Runner(tiny_pipe, "eager", group_norm="split")
        assert group_norm_kind(tiny_pipe.unet) == "split" and group_norm_kind(tiny_pipe.vae) == "native"
        split = Runner(tiny_pipe, "eager", group_norm="split", vae_group_norm="split")
        assert group_norm_kind(tiny_pipe.unet) == "split" and group_norm_kind(tiny_pipe.vae) == "split"
        out = split(["a cat"], [3], 64, 64)
        assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1  # the same image up to rounding
        with pytest.raises(ValueError, match="group_norm"):
            Runner(tiny_pipe, "eager", group_norm="fast")
        with pytest.raises(ValueError, match="vae_group_norm"):
            Runner(tiny_pipe, "eager", vae_group_norm="fast")
    finally:
        use_group_norm(tiny_pipe.unet, "native")
        use_group_norm(tiny_pipe.vae, "native")


MOMENTS_CHECK = """
import torch, torch.nn.functional as F
from torch import nn
from quant_utils.norms import (TritonAffineGroupNorm, TritonGroupNorm, kernel_moments, torch_moments, group_norm_triton,
                               group_norm_triton_affine)
torch.manual_seed(0)
cases = [((2, 96, 37, 23), "nchw", 0.0), ((2, 96, 37, 23), "nhwc", 0.0), ((1, 64, 3, 5), "nhwc", 1000.0),
         ((3, 40, 70, 70), "nchw", 300.0), ((2, 8, 4), "nchw", 0.0), ((1, 32, 1, 1), "nchw", 0.0),
         ((2, 16, 9, 9), "half", 5.0), ((2, 16, 12, 12), "strided", 0.0), ((1, 16, 300, 300), "nhwc", 2.0)]
for shape, layout, off in cases:
    x = torch.randn(shape, dtype=torch.float64) * 3 + off
    xk = x.half() if layout == "half" else x.float()
    if layout == "nhwc":
        xk = xk.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # spatial dims that do not collapse: the op copies to contiguous first
        xk = torch.randn(2, 16, 12, 24, dtype=torch.float64)[..., ::2].float()
        x = xk.double()
    mean, var = kernel_moments(xk)
    rm, rv = torch_moments(xk.double())
    em = ((mean.double() - rm).abs() / (rv.sqrt() + 1e-9)).max().item()
    ev = ((var.double() - rv).abs() / (rv + 1e-9)).max().item()
    g = 8 if shape[1] % 8 == 0 else 4
    eg = (group_norm_triton(xk, g, None, None, 1e-6).double() - F.group_norm(xk.double(), g, None, None, 1e-6)).abs().max().item()
    # the affine form, with weight and bias, and a group size that is no power of two (96 / 8 = 12 channels)
    w, b = torch.randn(shape[1], dtype=torch.float64), torch.randn(shape[1], dtype=torch.float64)
    ref = F.group_norm(xk.double(), g, w, b, 1e-6)
    ea = ((group_norm_triton_affine(xk, g, w.to(xk.dtype), b.to(xk.dtype), 1e-6).double() - ref).abs().max()
          / ref.abs().max()).item()
    print("case", layout, off, mean.dtype, tuple(mean.shape) == tuple(shape[:2]), f"{em:.3g} {ev:.3g} {eg:.3g} {ea:.3g}")
x = torch.randn(2, 3, 20, 20)
for norm in (TritonGroupNorm(4, 16), TritonAffineGroupNorm(4, 16)):
    m = nn.Sequential(nn.Conv2d(3, 16, 3), norm, nn.SiLU())
    with torch.no_grad():  # (inference only: the ops have no backward)
        ex = torch._dynamo.explain(m)(x)
        out = torch.compile(m, backend="aot_eager")(x)
        same = bool(torch.allclose(out, m(x), atol=1e-5))
    print("graphs", ex.graph_count, "breaks", ex.graph_break_count, "same", same)
"""


def test_triton_moments_kernel_in_the_interpreter():
    """The Triton statistics kernel (interpreted) against float64 statistics: NCHW and channels_last, fp16 input, a mean
    1000x the spread (shifted sums: no cancellation), ragged and single-pixel sizes, non-collapsible strides; the
    triton-affine GroupNorm (its per-group combine kernel too) against float64 GroupNorm with weight and bias; and
    both forms traced by torch.compile as one graph (the ops' fake shapes), the same output."""
    out = run_interpreted(MOMENTS_CHECK).splitlines()
    cases = [ln.split() for ln in out if ln.startswith("case")]
    assert len(cases) == 9
    for _, layout, off, dtype, shape_ok, em, ev, eg, ea in cases:
        assert dtype == "torch.float32" and shape_ok == "True", cases
        tol = 2e-3 if layout == "half" else 1e-4 * (1 + float(off) / 100)  # float32/fp16 inputs themselves
        assert float(em) < tol and float(ev) < 1e-3 and float(eg) < 10 * tol, (layout, off, em, ev, eg)
        assert float(ea) < (2e-3 if layout == "half" else 10 * tol), (layout, off, ea)  # relative to the output's max
    assert out[-2:] == ["graphs 1 breaks 0 same True"] * 2, out[-2:]
