"""quant_utils.kernels on the CPU: packing round trips, the integer reference against float64 math and the fake
path, the kernel-mode state (freed weights, weight bytes), and the Triton kernels themselves in the interpreter."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import REPO
from kernel_selfcheck import Case, build_layer, compare, make_input
from quant_utils.kernels import backend, packing
from quant_utils.kernels import reference as ref
from quant_utils.qlayers import QuantLayer


def _rand_q(shape, bits, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), shape, generator=g, dtype=torch.int8)


@pytest.mark.parametrize("bits", [8, 6, 4, 2])
@pytest.mark.parametrize("shape,split", [((24, 320), None), ((16, 200), None), ((8, 2048), None),
                                         ((12, 80, 3, 3), None), ((12, 96, 3, 3), 64), ((10, 48, 1, 1), 16)])
def test_pack_roundtrip_and_size(bits, shape, split):
    q = _rand_q(shape, bits, seed=bits)
    packed, fmt = packing.pack_weight(q, bits, split)
    assert torch.equal(packing.unpack_weight(packed, fmt, shape, split), q)
    assert packed.shape == (shape[0], fmt.k_padded * bits // 8)
    assert fmt.k_padded % fmt.group == 0 and fmt.group in (64, 128)
    taps = 1 if len(shape) == 2 else shape[2] * shape[3]
    assert fmt.k_padded >= taps * shape[1]


def test_pack_layout_is_the_documented_one():
    # bits 4, G=64: byte j of a group holds element j (low nibble) and element 32 + j (high nibble), offset-binary
    q = _rand_q((3, 64), 4, seed=1)
    packed, _ = packing.pack_weight(q, 4)
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    assert torch.equal(packed, u[:, :32] | (u[:, 32:] << 4))
    # bits 6, G=128: plane p (32 bytes) = u[32p + j] | ((u[96 + j] >> 2p) & 3) << 6
    q6 = _rand_q((2, 128), 6, seed=2)
    p6, _ = packing.pack_weight(q6, 6)
    u6 = (q6.to(torch.int16) + 32).to(torch.uint8)
    for p in range(3):
        assert torch.equal(p6[:, 32 * p:32 * (p + 1)], u6[:, 32 * p:32 * (p + 1)] | (((u6[:, 96:] >> 2 * p) & 3) << 6))


def test_pack_rejects_out_of_range_and_bad_bits():
    with pytest.raises(ValueError, match="4-bit range"):
        packing.pack_weight(torch.full((2, 64), 9, dtype=torch.int8), 4)
    with pytest.raises(ValueError):
        packing.storage_bits(9)
    assert [packing.storage_bits(b) for b in (2, 3, 4, 5, 6, 7, 8)] == [2, 4, 4, 6, 6, 8, 8]


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
    q = _rand_q((7, 96), 8, seed=3)
    w = _rand_q((40, 96), 4, seed=4)
    ws, bias = torch.rand(40, dtype=torch.float64) * 0.01, torch.randn(40, dtype=torch.float64)
    y = ref.linear_int(q, w, ws, aq, bias)
    deq = ((q.double() - aq.zero) * aq.scale) @ (w.double() * ws[:, None]).t() + bias
    assert torch.allclose(y, deq, rtol=1e-12, atol=1e-12)


def test_conv_reference_pads_with_the_zero_point_and_splits():
    a1, a2 = ref.ActQuant(0.05, 3, 8), ref.ActQuant(0.2, -9, 6)
    x = torch.randn(2, 48, 5, 5, dtype=torch.float64)
    q = ref.quantize_act_split(x, a1, a2, 32)
    w = _rand_q((8, 48, 3, 3), 6, seed=5)
    ws, bias = torch.rand(8, dtype=torch.float64) * 0.01, torch.randn(8, dtype=torch.float64)
    y = ref.conv_int(q, w, ws, a1, a2, 32, bias, 1, 1)
    xq = torch.cat([(q[:, :32].double() - a1.zero) * a1.scale, (q[:, 32:].double() - a2.zero) * a2.scale], dim=1)
    expect = F.conv2d(xq, w.double() * ws.view(-1, 1, 1, 1), bias, 1, 1)  # zero padding of the dequantized input
    assert torch.allclose(y, expect, rtol=1e-12, atol=1e-12)


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


def test_triton_kernels_in_the_interpreter():
    """Every format, ragged tiles, split, BOS, stride 2, 1x1, protected: Triton kernels (interpreted) vs reference."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "tests/gpu/kernel_selfcheck.py", "--all_configs"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count("PASS") >= 80 and "FAIL" not in proc.stdout


TRACE_CHECK = """
import torch
from quant_utils import kernel_bench as kb
from quant_utils.calibrate import observing
from quant_utils.pipeline import build_pipeline, load_model_config
from quant_utils.quantize import make_spec, quantize_unet, set_backend, uniform_bits
unet = build_pipeline(load_model_config("configs/stable-diffusion/sdxl_turbo_tiny.yaml"), device="cpu",
                      dtype=torch.float16).unet
inputs = kb.unet_inputs(unet, 1, 64)
quantize_unet(unet, make_spec(unet, uniform_bits(unet, 8), uniform_bits(unet, 8), a_method="minmax"), search=False)
with observing(unet), torch.no_grad():
    unet(**inputs)
set_backend(unet, "kernel")
with torch.no_grad():
    ex = torch._dynamo.explain(lambda: unet(**inputs).sample)()
print("graphs", ex.graph_count, "breaks", ex.graph_break_count, [r.reason[:200] for r in ex.break_reasons])
"""


def test_kernel_backend_traces_as_one_graph_under_torch_compile():
    """torch.compile needs the kernel path free of graph breaks (host syncs, data-dependent Python): dynamo traces
    the whole quantized tiny UNet, custom ops included (Triton interpreted on the CPU), into one graph."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", TRACE_CHECK], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "graphs 1 breaks 0 []" in proc.stdout, proc.stdout[-2000:]


REGIONS_CHECK = TRACE_CHECK.replace("""with torch.no_grad():
    ex = torch._dynamo.explain(lambda: unet(**inputs).sample)()
print("graphs", ex.graph_count, "breaks", ex.graph_break_count, [r.reason[:200] for r in ex.break_reasons])
""", """from torch._dynamo.utils import counters
from quant_utils.runtime import compile_regions
with torch.no_grad():
    ref = unet(**inputs).sample
    n = compile_regions(unet, backend="eager")
    out = unet(**inputs).sample
print("regions", n, "graphs", counters["stats"]["unique_graphs"], "same", bool(torch.equal(out, ref)))
""")


def test_compiled_regions_share_graphs_across_same_shape_blocks():
    """compile_regions compiles each resnet/transformer block; blocks of one shape (different weights and quantizer
    parameters) must reuse one dynamo graph, not recompile per instance (28 regions -> 12 graphs on the tiny
    UNet), and the regions must compute what the uncompiled model does."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", REGIONS_CHECK], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("regions"))
    _, regions, _, graphs, _, same = line.split()
    assert int(regions) == 28 and int(graphs) < int(regions) / 2 and same == "True", line


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


def test_bench_kernels_exec_modes_parse_in_run_order():
    """bench_kernels runs CUDA-graph variants before compiled ones (compiling changes the model in place)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_kernels

    from quant_utils.errors import ConfigError

    assert bench_kernels.parse_args(["--unet_exec", "compile,graph"]).unet_exec == ["graph", "compile"]
    for bad in ("", "eager", "graph,jit"):
        with pytest.raises(ConfigError, match="unet_exec"):
            bench_kernels.parse_args(["--unet_exec", bad])


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
