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
