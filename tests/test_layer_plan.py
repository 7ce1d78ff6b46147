"""quant_utils/layer_plan.py on the CPU (the kernel state's integer reference stands in for the kernels; the timings
are given): which layers a bucket's plan moves, that it changes the math at that bucket only, its memory report,
and that a planned UNet still traces as one graph under torch.compile."""
import copy
import math
import warnings

import pytest
import torch

from conftest import EXPLAIN, KERNEL_BACKEND, QUANT_UNET, TINY, run_interpreted


@pytest.fixture(scope="module")
def fake_unet():
    """The tiny UNet quantized W8A8 (fp16, min-max ranges), on the fake backend."""
    from quant_utils import kernel_bench as kb
    from quant_utils.calibrate import observing
    from quant_utils.pipeline import build_pipeline, load_model_config
    from quant_utils.quantize import make_spec, quantize_unet, uniform_bits

    unet = build_pipeline(load_model_config(TINY), device="cpu", dtype=torch.float16).unet
    quantize_unet(unet, make_spec(unet, uniform_bits(unet, 8), uniform_bits(unet, 8), a_method="minmax"), search=False)
    with observing(unet), torch.no_grad():
        unet(**kb.unet_inputs(unet, 1, 64))
    return unet


def _kernel_copy(unet):
    """A copy with every layer prepared for the kernel backend (on a CPU its forward computes the kernels' integer
    reference)."""
    from quant_utils.quantize import use_kernels

    unet = copy.deepcopy(unet)
    use_kernels(unet)
    return unet


def _forward(unet, batch):
    from quant_utils import kernel_bench as kb

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "kernel backend on a CPU: computing the integer reference"
        return unet(**kb.unet_inputs(unet, batch, 64, seed=3)).sample.float()


def _linears_at_batch_1_win_by(winner: str):
    """Stand-in timings: for linears at batch 1 `winner` (dense: cuBLAS, wonly: fp16 activations on the packed
    weight) is fastest; the layers' own kernels win everywhere else."""
    def measure(st, x):
        fast = st.kind == "linear" and x.shape[0] == 1
        times = {st.path: 2.0, "dense": 1.0 if fast and winner == "dense" else 3.0}
        if st.kind == "linear":
            times["wonly"] = 1.0 if fast and winner == "wonly" else 2.5
        return times
    return measure


@pytest.mark.parametrize("winner", ["dense", "wonly"])
def test_plan_moves_the_losing_layers_at_their_bucket_only(fake_unet, winner):
    from quant_utils import layer_plan
    from quant_utils.quantize import quant_layers

    unet = _kernel_copy(fake_unet)
    before = {b: _forward(unet, b) for b in (1, 2)}
    calls = []
    timings = _linears_at_batch_1_win_by(winner)

    def measure(st, x):
        calls.append(x.shape)
        return timings(st, x)

    from quant_utils import kernel_bench as kb

    inputs = {b: kb.unet_inputs(unet, b, 64) for b in (1, 2)}
    for b in (1, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = layer_plan.plan_bucket(unet, lambda: unet(**inputs[b]), (b, 4, 8, 8), measure=measure,
                                          dense_budget=1.0, info={"batch": b})
        assert rows and all(r["batch"] == b for r in rows)
    n_calls = len(calls)
    assert layer_plan.plan_bucket(unet, lambda: pytest.fail("planned twice"), (1, 4, 8, 8), measure=measure)
    assert len(calls) == n_calls  # once per (UNet, bucket)

    kernel = layer_plan.kernel_layers(unet)
    linears = [m for _, m in kernel if m.kernel_state.kind == "linear"]
    assert linears and len(linears) < len(kernel)  # the tiny UNet has kernel convs too
    assert all(m.kernel_state.path == "int" for m in linears)  # uniform W8A8: no protected activations
    for _, m in kernel:
        paths = dict(m.kernel_state.bucket_paths)
        assert set(paths.values()) == ({winner} if m.kernel_state.kind == "linear" else set())
        assert len(paths) <= 1  # batch 1 only
    s1 = layer_plan.dense_summary(unet, (1, 4, 8, 8))
    moved = {"dense": s1["dense_layers"], "wonly": s1["wonly_layers"]}
    assert moved[winner] == len(linears) and sum(moved.values()) == len(linears) and s1["kernel_layers"] == len(kernel)
    s2 = layer_plan.dense_summary(unet, (2, 4, 8, 8))
    assert s2["dense_layers"] == s2["wonly_layers"] == 0
    dense_weights = sum(m.kernel_state.fp16_weight.numel() * 2 + m.kernel_state.n * 2 for m in linears) \
        if winner == "dense" else 0  # wonly keeps the packed weights only
    assert s1["dense_bytes"] == dense_weights == sum(r["dense_bytes_added"] for r in layer_plan.plan_rows(unet))

    # batch 2 is untouched; batch 1 now computes the linears on the (dequantized) weight with fp16 activations,
    # which is the fake path with those layers' activation quantizers off
    assert torch.equal(_forward(unet, 2), before[2])
    after = _forward(unet, 1)
    ref = copy.deepcopy(fake_unet)
    for (_, m), (_, r) in zip(quant_layers(unet), quant_layers(ref)):
        r.use_aq = not (m.kernel_state.kind == "linear" and m.kernel_state.path == "int")
    want = _forward(ref, 1)
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    floor = rel(before[1], _forward(fake_unet, 1))  # kernel reference vs its fake twin, nothing planned
    assert rel(after, want) < 1.5 * floor < rel(before[1], want)  # moved to the fp16-activation math


def test_the_dense_budget_keeps_the_best_savings_per_byte(fake_unet):
    """With a budget of 5 % of the weights in fp16, groups go dense by time saved per byte until it is spent; the
    rest keep their kernels, marked budget_limited; a later bucket reuses dense weights at no cost."""
    from quant_utils import kernel_bench as kb
    from quant_utils import layer_plan

    unet = _kernel_copy(fake_unet)
    budget = 0.05 * sum((math.prod(m.kernel_state.shape) + m.kernel_state.n) * 2
                        for _, m in layer_plan.kernel_layers(unet))

    def measure(st, x):  # every linear wins by 1 us per call: small layers save the most per byte
        return {st.path: 2.0, "dense": 1.0 if st.kind == "linear" else 3.0}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inputs = kb.unet_inputs(unet, 1, 64)
        rows = layer_plan.plan_bucket(unet, lambda: unet(**inputs), (1, 4, 8, 8), measure=measure, dense_budget=0.05)
    dense = [r for r in rows if r["path"] == "dense"]
    limited = [r for r in rows if r["budget_limited"]]
    assert dense and limited and all(r["kind"] == "linear" and r["own_path"] == r["path"] for r in limited)
    held = layer_plan.dense_summary(unet)["dense_bytes"]
    assert 0 < held <= budget and held == sum(r["dense_bytes_added"] for r in dense)
    assert all(held + _bytes(r) > budget for r in limited)  # each left out would not have fitted
    per_byte = {id(r): r["layers"] / _bytes(r) for r in dense + limited}  # 1 us saved per layer
    assert max(dense + limited, key=lambda r: per_byte[id(r)])["path"] == "dense"


def _bytes(row) -> int:
    """Device bytes of a plan row's layers as dense fp16 weights (weight + bias)."""
    n, k = (int(v) for v in row["weight_shape"].split("x")[:2])
    return row["layers"] * (n * k + n) * 2


def test_a_tie_keeps_the_packed_weights():
    from quant_utils.layer_plan import MARGIN, choose

    assert choose({"int": 10.0, "dense": 9.9}, "int") == "int"  # within the margin: no fp16 copy for 1 %
    assert choose({"int": 10.0, "dense": 10.0 / (1 + MARGIN) - 0.1}, "int") == "dense"
    assert choose({"wonly": 5.0, "dense": 7.0}, "wonly") == "wonly"
    assert choose({"int": 10.0, "wonly": 6.0, "dense": 5.9}, "int") == "wonly"  # dense must beat wonly, not int
    assert choose({"int": 10.0, "wonly": 9.8, "dense": 12.0}, "int") == "int"  # wonly within the margin


def test_runner_refuses_an_unknown_plan(tiny_pipe):
    from quant_utils.runtime import Runner

    with pytest.raises(ValueError, match="layer_plan"):
        Runner(tiny_pipe, "eager", layer_plan="sometimes")
    assert Runner(tiny_pipe, "eager").layer_plan == "off"  # a CPU Runner never plans: nothing to time


def test_a_planned_unet_traces_as_one_graph():
    """torch.compile needs the kernel path free of graph breaks (host syncs, data-dependent Python): dynamo traces the
    whole quantized tiny UNet into one graph, with the plan's per-layer choices resolved while tracing (static
    shapes): int8 custom ops (convs, every other linear geometry) and dense layers (the other linears) together
    (Triton interpreted on the CPU)."""
    out = run_interpreted(QUANT_UNET + KERNEL_BACKEND + """
import itertools
from quant_utils import layer_plan
turn = itertools.count()
def measure(st, x):  # convs keep their kernel; linear geometries alternate between dense and their kernel
    dense_wins = st.kind == "linear" and next(turn) % 2 == 0
    return {st.path: 2.0, "dense": 1.0 if dense_wins else 3.0}
with torch.no_grad():
    rows = layer_plan.plan_bucket(unet, lambda: unet(**inputs), (1, 4, 8, 8), measure=measure, dense_budget=1.0)
print("paths", sorted({(r["kind"], r["path"]) for r in rows}))
""" + EXPLAIN)
    assert "graphs 1 breaks 0 []" in out, out[-2000:]
    assert "paths [('conv', 'int'), ('linear', 'dense'), ('linear', 'int')]" in out, out[-2000:]


def test_measured_times_persist_for_a_later_process(tmp_path, monkeypatch):
    """The times a plan measures go to this user's cache file; a later process (fresh memo) plans the same geometry
    and input size from it without measuring; another input size is measured; a damaged file is measured again."""
    from types import SimpleNamespace

    from quant_utils import layer_plan

    st = SimpleNamespace(kind="linear", path="int", shape=(32, 64), bits=8, fmt=SimpleNamespace(group=64), bos=False,
                         split=None, stride=1, pad=0)
    calls = []

    def measure(s, x):
        calls.append(tuple(x.shape))
        return {"int": 5.0, "dense": 4.0}

    path = tmp_path / "times.json"
    monkeypatch.setattr(layer_plan, "_TIMES", {})
    cache = layer_plan.TimesCache(path)
    assert cache.get(st, torch.zeros(3, 64), measure) == ({"int": 5.0, "dense": 4.0}, "measured")
    assert not path.exists()  # written by save
    cache.save()
    assert cache.count == {"cache": 0, "measured": 1} and path.is_file()
    monkeypatch.setattr(layer_plan, "_TIMES", {})  # a new process
    cache = layer_plan.TimesCache(path)
    assert cache.get(st, torch.zeros(3, 64), measure) == ({"int": 5.0, "dense": 4.0}, "cache") and calls == [(3, 64)]
    cache.get(st, torch.zeros(5, 64), measure)
    assert calls == [(3, 64), (5, 64)] and cache.count == {"cache": 1, "measured": 1}
    path.write_text("{not json")
    monkeypatch.setattr(layer_plan, "_TIMES", {})
    with pytest.warns(UserWarning, match="ignoring the times cache"):
        cache = layer_plan.TimesCache(path)
    cache.get(st, torch.zeros(3, 64), measure)
    cache.save()
    assert len(calls) == 3 and cache.count["measured"] == 1 and "times" in path.read_text()
    assert layer_plan.TimesCache(None).get(st, torch.zeros(3, 64), measure)[1] == "measured"  # no cache: measure
    monkeypatch.setenv("MIXDQ_PLAN_CACHE", "none")
    assert layer_plan.times_cache_path() is None


def test_cold_l2_timing_cycles_through_copies_of_the_weight(monkeypatch):
    """MIXDQ_PLAN_L2=cold: every path's callable reads the next of `copies` distinct weights in turn (the packed one
    first), with the same input; the copies fill twice the L2; the times are cached apart from warm ones."""
    from quant_utils import layer_plan
    from quant_utils.kernels import backend

    st = backend.KernelState(path="int", kind="linear", n=8, shape=(8, 16), bits=8,
                             packed=torch.arange(128, dtype=torch.int8).reshape(8, 16), bias=torch.zeros(8))
    read = []
    monkeypatch.setattr(backend, "_quantize", lambda s, x, ops: x)
    monkeypatch.setattr(backend, "_int_core", lambda s, x, q, ops: read.append(s.packed) or x)
    monkeypatch.setattr(backend, "_wonly_forward", lambda s, x, ops: read.append(s.packed) or x)
    x = torch.randn(4, 16, dtype=torch.float16)
    fns = backend.path_candidates(st, x, copies=3)
    assert sorted(fns) == ["dense", "int", "wonly"]
    for _ in range(6):
        fns["int"]()
    assert read[0] is st.packed and len({t.data_ptr() for t in read}) == 3
    assert all(read[i] is read[i + 3] and torch.equal(read[i], st.packed) for i in range(3))
    dense = [fns["dense"]() for _ in range(4)]
    assert not torch.equal(dense[0], dense[1]) and torch.equal(dense[0], dense[3])  # 3 random weights, in turn

    assert layer_plan.weight_copies(st, l2_bytes=640) == 10  # 2 x 640 bytes over the 128-byte packed weight
    assert layer_plan.weight_copies(st, l2_bytes=10**9) == layer_plan.MAX_COPIES
    geo = dict(bits=8, fmt=None, bos=False, split=None, stride=1, pad=0)
    pytest.importorskip("triton")
    warm = layer_plan._times_key(backend.KernelState(path="int", kind="linear", n=8, shape=(8, 16), **geo), (4, 16))
    monkeypatch.setenv("MIXDQ_PLAN_L2", "cold")
    assert layer_plan._times_key(backend.KernelState(path="int", kind="linear", n=8, shape=(8, 16), **geo),
                                 (4, 16)) == warm + "|l2=cold"
    monkeypatch.setenv("MIXDQ_PLAN_L2", "hot")
    with pytest.raises(ValueError, match="MIXDQ_PLAN_L2='hot'"):
        layer_plan.plan_l2()
