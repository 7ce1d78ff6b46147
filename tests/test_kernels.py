"""quant_utils.kernels as a whole on the CPU: the Triton kernels themselves in the interpreter (every format and case
of the self-check), the kernel backend traced by torch.compile as one graph, compiled regions sharing graphs. The
modules' own tests: test_kernels_packing, _reference, _backend, _ops, _tuning."""
import os
import subprocess
import sys

from conftest import EXPLAIN, KERNEL_UNET, REPO, run_interpreted


def test_triton_kernels_in_the_interpreter():
    """Every format, ragged tiles, split, BOS, stride 2, 1x1, protected, every tile config (the opt-in TMA, persistent
    and FIXUP split-K ones too; FIXUP's counters reset, or the next case would fail): Triton kernels (interpreted) vs
    reference."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "MIXDQ_TMA": "1", "MIXDQ_PERSIST": "1", "MIXDQ_FIXUP": "1"}  # opt-ins
    proc = subprocess.run([sys.executable, "tests/gpu/kernel_selfcheck.py", "--all_configs"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count("PASS") >= 80 and "FAIL" not in proc.stdout
    assert proc.stdout.count(" tma") >= 10  # the TMA configs were checked
    assert proc.stdout.count(" persist") >= 15  # the persistent ones too (8-bit, and 4-bit through PRE)
    assert proc.stdout.count(" fixup int") >= 30  # FIXUP split-K on int8 codes, every weight format


def test_kernel_backend_traces_as_one_graph_under_torch_compile():
    """torch.compile needs the kernel path free of graph breaks (host syncs, data-dependent Python): dynamo traces
    the whole quantized tiny UNet, custom ops included (Triton interpreted on the CPU), into one graph."""
    out = run_interpreted(KERNEL_UNET + EXPLAIN)
    assert "graphs 1 breaks 0 []" in out, out[-2000:]


REGIONS_CHECK = KERNEL_UNET + """
from torch._dynamo.utils import counters
from quant_utils.runtime import compile_regions
with torch.no_grad():
    ref = unet(**inputs).sample
    n = compile_regions(unet, backend="eager")
    out = unet(**inputs).sample
print("regions", n, "graphs", counters["stats"]["unique_graphs"], "same", bool(torch.equal(out, ref)))
"""


def test_compiled_regions_share_graphs_across_same_shape_blocks():
    """compile_regions compiles each resnet/transformer block; blocks of one shape (different weights and quantizer
    parameters) must reuse one dynamo graph, not recompile per instance (28 regions -> 12 graphs on the tiny
    UNet), and the regions must compute what the uncompiled model does."""
    line = next(ln for ln in run_interpreted(REGIONS_CHECK).splitlines() if ln.startswith("regions"))
    _, regions, _, graphs, _, same = line.split()
    assert int(regions) == 28 and int(graphs) < int(regions) / 2 and same == "True", line




def test_selfcheck_skips_an_opt_in_config_that_does_not_build_and_fails_everything_else(monkeypatch):
    """A TMA/persistent/FIXUP config that this Triton cannot compile is reported SKIP (the autotuner skips it too);
    the same error on a tuned-file config, or any other error (a fault, a wrong shape), still stops the check."""
    import pytest

    sys.path.insert(0, str(REPO / "tests" / "gpu"))
    import kernel_selfcheck as sc
    from quant_utils.kernels import backend, launch

    def broken(st, x):
        raise RuntimeError("PassManager::run failed")

    monkeypatch.setattr(backend, "forward", broken)
    case = sc.Case("linear", 48, 160, 8, 8, rows=300)
    row = sc.check_case(case, "cpu", cfg=launch._persist(128, 128, 8, 3, True))
    assert row["ok"] and "PassManager" in row["skipped"] and "SKIP (does not build" in sc.format_rows([row])
    with pytest.raises(RuntimeError, match="PassManager"):
        sc.check_case(case, "cpu", cfg=launch._cfg(128, 128, 8, 3))
    monkeypatch.setattr(backend, "forward", lambda st, x: (_ for _ in ()).throw(RuntimeError("illegal memory access")))
    with pytest.raises(RuntimeError, match="illegal"):
        sc.check_case(case, "cpu", cfg=launch._fixup(64, 128, 4, 4, True, 4))
