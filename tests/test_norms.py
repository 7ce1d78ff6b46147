"""The split GroupNorm (quant_utils/norms.py): PyTorch's GroupNorm in numbers, switched in place, chosen by the Runner."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quant_utils.norms import SplitGroupNorm, group_norm_split, use_group_norm


def group_norm_kind(model: nn.Module) -> str:
    """"split", "native", "mixed" or "none": how the GroupNorms of `model` compute now."""
    kinds = {type(m) is SplitGroupNorm for m in model.modules() if isinstance(m, nn.GroupNorm)}
    return "none" if not kinds else "mixed" if len(kinds) == 2 else "split" if kinds == {True} else "native"


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
    assert use_group_norm(model, "native") == 2 and group_norm_kind(model) == "native"
    assert group_norm_kind(nn.Linear(2, 2)) == "none"
    with pytest.raises(ValueError, match="group_norm"):
        use_group_norm(model, "auto")


def test_runner_applies_the_group_norm_to_unet_and_decoder(tiny_pipe):
    from quant_utils.runtime import Runner

    try:
        native = Runner(tiny_pipe, "eager")
        assert native.group_norm == "native" and group_norm_kind(tiny_pipe.unet) == "native"
        ref = native(["a cat"], [3], 64, 64)
        split = Runner(tiny_pipe, "eager", group_norm="split")
        assert group_norm_kind(tiny_pipe.unet) == "split" and group_norm_kind(tiny_pipe.vae) == "split"
        out = split(["a cat"], [3], 64, 64)
        assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1  # the same image up to rounding
        with pytest.raises(ValueError, match="group_norm"):
            Runner(tiny_pipe, "eager", group_norm="fast")
    finally:
        use_group_norm(tiny_pipe.unet, "native")
        use_group_norm(tiny_pipe.vae, "native")
