"""quant_utils/kernels/backend.py: plan() from a LayerSpec, prepare() that only reads the layer, the prepared
state's reference against QuantLayer's fake path, the CPU fallback of forward()."""
import pytest
import torch
from torch import nn

from kernel_selfcheck import Case, build_layer, compare, make_input
from quant_utils.kernels import backend
from quant_utils.qlayers import QuantLayer


@pytest.mark.parametrize("case", [Case("linear", 48, 64, 4, 8, rows=9), Case("linear", 48, 64, 8, 8, rows=9, bos=True),
                                  Case("conv", 16, 48, 6, 8, hw=5, split=32), Case("conv", 16, 32, 8, 8, hw=6, stride=2),
                                  Case("linear", 32, 64, 6, None, rows=5), Case("conv", 16, 32, 4, None, hw=4)],
                         ids=lambda c: c.name)
def test_kernel_state_reference_equals_fake_path(case):
    """The backend's math (integer reference of the prepared state) is qlayers' fake-quant math."""
    layer = build_layer(case, "cpu", seed=11).float()  # prepared, fp16 weights cast: compare in float32
    fresh = _fresh_fake_layer(case, seed=11)
    x = make_input(case, "cpu", seed=11).float()
    with torch.no_grad():
        fake = fresh(x)
    got = backend.reference_forward(layer.kernel_state, x)
    # the fp16 path keeps the dequantized weight in fp16 (as the fake path of an fp16 model does): fp16 rounding
    tol = 1e-3 if layer.kernel_state.path == "fp16" else 1e-5
    assert compare(got, fake.double())["rel_l2"] < tol


def _fresh_fake_layer(case, seed):
    """The same layer (same seed) left on the fake backend, in float32."""
    return build_layer(case, "cpu", seed, prepared=False).float()


def test_prepare_only_reads_the_layer():
    """kernels.prepare returns the state and leaves the layer as it was: the layer frees its own weights."""
    layer = QuantLayer(nn.Linear(64, 32).half(), 8, 8)
    layer.act_quant.scale.fill_(0.03)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    st = backend.prepare(layer)
    assert isinstance(st, backend.KernelState) and layer.kernel_state is None
    assert layer.weight is not None and layer.w_int.shape == (32, 64)
    assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())


def test_plan_takes_a_layer_spec_and_the_fp16_conv_policy():
    """plan() decides from shapes and bits alone (what bench_kernels asks before any weight exists); a conv the
    caller keeps on cuDNN takes the fp16 path."""
    spec = backend.LayerSpec("conv", 320, 640, (640, 320, 3, 3), 4, 8, stride=(2, 2), padding=(1, 1))
    pl = backend.plan(spec)
    assert (pl.path, pl.bits, pl.seg) == ("int", 4, (320,))
    assert backend.plan(spec, fp16_convs=frozenset({(320, 640, 3, 2)})).path == "fp16"
    assert backend.plan(backend.LayerSpec("linear", 640, 2048, (2048, 640), 6, None)).path == "wonly"
    layer = QuantLayer(nn.Conv2d(32, 16, 3, 2, 1).half(), 4, 8)
    assert backend.LayerSpec.of(layer) == backend.LayerSpec("conv", 32, 16, (16, 32, 3, 3), 4, 8, stride=(2, 2),
                                                            padding=(1, 1))


def test_cpu_forward_warns_and_returns_the_reference():
    case = Case("linear", 32, 64, 8, 8, rows=3)
    layer = build_layer(case, "cpu", seed=3)
    x = make_input(case, "cpu", seed=3)
    with pytest.warns(UserWarning, match="integer reference"):
        y = backend.forward(layer.kernel_state, x)
    assert y.dtype == torch.float16 and y.shape == (2, 3, 32)
    assert compare(y, backend.reference_forward(layer.kernel_state, x.double()))["max_ulp"] <= 1.0


@pytest.mark.parametrize("case", [Case("linear", 32, 64, 4, 8, rows=9, bos=True), Case("linear", 32, 64, 6, None, rows=9),
                                  Case("conv", 16, 48, 6, 8, hw=5, split=32)], ids=lambda c: c.name)
def test_bucket_override_takes_its_path_for_its_rows_only(case):
    """A bucket plan's `dense` override (set_bucket_path) changes the math for inputs of its size only: the
    dequantized weight with unquantized activations; other sizes keep the layer's path; the dense weight's bytes are
    reported once; setting the layer's own path back removes the override."""
    path = "dense"
    layer = build_layer(case, "cpu", seed=5).float()
    st = layer.kernel_state
    x = make_input(case, "cpu", seed=5).float()
    other = torch.cat([x, x])  # another bucket: twice the batch
    rows = backend.input_rows(st, x)
    own = st.path
    int_y, int_other = backend.reference_forward(st, x), backend.reference_forward(st, other)
    added = backend.set_bucket_path(st, rows, path)
    assert backend.path_for(st, x) == path and backend.path_for(st, other) == own
    w = backend.unpacked_weight(st).float() * st.w_scale.view((-1,) + (1,) * (len(st.shape) - 1))
    if case.kind == "linear":
        want = torch.nn.functional.linear(x, w, st.bias)
    else:
        want = torch.nn.functional.conv2d(x, w, st.bias, st.stride, st.pad)
    got = backend.reference_forward(st, x)
    assert compare(got, want.double())["rel_l2"] < 1e-3  # the weight in fp16
    if own == "int":
        assert compare(int_y, want.double())["rel_l2"] > 1e-3  # the int path differs: activations quantized
    assert torch.equal(backend.reference_forward(st, other), int_other)
    assert added == st.fp16_weight.numel() * 2 + st.n * 2 == backend.dense_bytes(st)
    # a dense conv weight is laid out channels_last, as the compiled FP16 UNet runs its convs (what the plan timed)
    assert case.kind == "linear" or st.fp16_weight.is_contiguous(memory_format=torch.channels_last)
    assert backend.set_bucket_path(st, rows, path) == 0  # the dense weight is built once
    backend.set_bucket_path(st, rows, own)
    assert st.bucket_paths == () and torch.equal(backend.reference_forward(st, x), int_y)


def test_bucket_override_refuses_paths_a_layer_cannot_take():
    conv = build_layer(Case("conv", 16, 32, 8, 8, hw=4), "cpu", seed=1).kernel_state
    with pytest.raises(ValueError, match=r"expected one of \('int', 'dense'\)"):
        backend.set_bucket_path(conv, 32, "wonly")  # no fp16-activation conv kernel
    linear = build_layer(Case("linear", 32, 64, 8, 8, rows=3), "cpu", seed=1).kernel_state
    assert backend.bucket_paths(linear) == ("int", "wonly", "dense")
    backend.set_bucket_path(linear, 6, "wonly")
    assert linear.bucket_paths == ((6, "wonly"),) and linear.fp16_weight is None  # no extra memory
    fp16 = build_layer(Case("linear", 32, 64, 8, 8, rows=3), "cpu", seed=1, prepared=False)
    fp16.w_zero_point.fill_(1)  # asymmetric weights: the fp16 path, no packed weights to override
    with pytest.raises(ValueError, match="int/wonly"):
        backend.set_bucket_path(backend.prepare(fp16), 6, "dense")
    with pytest.raises(ValueError, match="expected"):
        backend.set_bucket_path(conv, 32, "cublas")


CONV_OUTPUTS_CHECK = """
import sys, torch
sys.path.insert(0, "tests/gpu")
from kernel_selfcheck import Case, build_layer, make_input
from quant_utils.kernels import backend
for case in (Case("conv", 16, 32, 8, 8, hw=6), Case("conv", 16, 48, 6, 8, hw=5, split=32)):
    layer = build_layer(case, "cpu", seed=5)
    x = make_input(case, "cpu", seed=5)
    nchw = backend.forward(layer.kernel_state, x)
    backend.use_conv_outputs(layer, "nhwc")
    nhwc = backend.forward(layer.kernel_state, x)
    print("layout", bool(torch.equal(nchw, nhwc)), nchw.is_contiguous(),
          nhwc.is_contiguous(memory_format=torch.channels_last))
"""


def test_conv_outputs_layout_per_model():
    """use_conv_outputs sets every int8 conv's output layout (not the linears'), refuses an unknown layout, and on
    the kernels (Triton interpreter) an `nhwc` conv gives the NCHW values in channels_last memory, split input too."""
    from conftest import run_interpreted

    model = nn.Sequential(build_layer(Case("conv", 16, 32, 8, 8, hw=6), "cpu", seed=1),
                          build_layer(Case("linear", 32, 64, 8, 8, rows=5), "cpu", seed=1))
    assert backend.use_conv_outputs(model, "nhwc") == 1 and model[0].kernel_state.out_nhwc
    assert not model[1].kernel_state.out_nhwc
    assert backend.use_conv_outputs(model, "nchw") == 1 and not model[0].kernel_state.out_nhwc
    with pytest.raises(ValueError, match="'channels_last'"):
        backend.use_conv_outputs(model, "channels_last")
    lines = [ln for ln in run_interpreted(CONV_OUTPUTS_CHECK).splitlines() if ln.startswith("layout")]
    assert lines == ["layout True True True"] * 2, lines
