"""quant_utils/kernels/ops.py: the plain-torch twins the compiled path quantizes with, and the views the custom
ops copy."""
import pytest
import torch

from quant_utils.kernels import reference as ref


@pytest.mark.parametrize("split", [None, 16])
def test_compiled_path_quantize_twins_equal_the_reference(split):
    """Under torch.compile the backend quantizes with plain torch ops reading the layer's parameter tensor
    (KernelState.qt), so Inductor fuses them into the producer; they must give the reference's codes exactly,
    with the parameters as that tensor or as numbers."""
    from quant_utils.kernels import ops

    g = torch.Generator().manual_seed(3)
    a1 = ref.ActQuant(0.037, -5, 8)
    a2 = ref.ActQuant(0.011, 3, 4) if split else a1
    nums = [(a.scale, a.zero, a.qmin, a.qmax) for a in (a1, a2)]
    qt = torch.tensor(nums[0] + nums[1], dtype=torch.float32)
    x = (torch.randn(2, 32, 5, 7, generator=g) * 3).half()
    want = ref.quantize_act_split(x, a1, a2 if split else None, split)
    s = split or 1 << 30
    border = torch.tensor([a1.zero] * (split or 32) + [a2.zero] * (32 - (split or 32)), dtype=torch.int8)
    for p1, p2 in ((qt[:4], qt[4:]), nums):
        got = ops.quant_nhwc_torch(x, s, 1, p1, p2)  # padded NHWC, border = each channel's zero point
        assert torch.equal(got[:, 1:-1, 1:-1], want.permute(0, 2, 3, 1))
        assert torch.equal(got[:, 0, 0], border.expand(2, -1)) and torch.equal(got[:, -1, -1], border.expand(2, -1))
        assert torch.equal(ops.fake_quant_torch(x, s, p1, p2), ref.fake_quant(x, a1, a2 if split else None, split))
        if not split:
            assert torch.equal(ops.quant_torch(x, *p1), want)


def test_custom_ops_copy_only_the_views_the_kernels_cannot_read():
    """A compiled graph may hand qlinear/qconv a permuted or offset view; the ops pass readable tensors through
    untouched and copy the rest into a contiguous, aligned buffer (same values)."""
    from quant_utils.kernels.ops import _aligned

    x = torch.arange(64 * 32, dtype=torch.int8).reshape(64, 32)
    assert _aligned(x) is x
    rows = torch.zeros(8, 5, 32, dtype=torch.int8)[:, 0, :]  # BOS rows: unit stride, rows 160 bytes apart
    assert _aligned(rows, rows_may_stride=True) is rows and _aligned(rows) is not rows
    for view in (x.t(), x.view(-1)[1:1 + 32 * 16].view(16, 32)):  # permuted; offset by one byte
        y = _aligned(view, rows_may_stride=True)
        assert y.is_contiguous() and y.data_ptr() % 16 == 0 and torch.equal(y, view)


def test_group_norm_ops_leave_the_layout_to_inductor():
    """The GroupNorm statistics ops read any layout, and say so: Inductor's default for custom ops (keep the eager
    strides) would copy a channels_last conv output to NCHW before every GroupNorm of a compiled decoder."""
    import torch

    from quant_utils.kernels import ops  # noqa: F401  (registers the ops)
    from torch._inductor.lowering import tag_to_layout_constraint
    from torch._library.utils import get_layout_constraint_tag

    def constraint(op):  # what Inductor applies to the op's inputs when it lowers it as a fallback (graph.py)
        return tag_to_layout_constraint(get_layout_constraint_tag(op, with_default=True))

    for op in (torch.ops.mixdq.channel_moments.default, torch.ops.mixdq.group_affine.default):
        assert get_layout_constraint_tag(op) == torch.Tag.flexible_layout and constraint(op) is None
    assert constraint(torch.ops.mixdq.qlinear.default) is not None  # the GEMMs keep the default constraint
