"""quant_utils.kernels as a whole on the CPU: the Triton kernels themselves in the interpreter (every format and case
of the self-check), compiled regions sharing graphs, the decoder kernel's SASS. The modules' own tests:
test_kernels_packing, _reference, _backend, _ops, _tuning; the whole kernel UNet traced by dynamo as one graph (with
a plan): test_layer_plan."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import QUANT_UNET, REPO, run_interpreted, run_main

from quant_utils.csvio import read_csv


def test_triton_kernels_in_the_interpreter():
    """Every format, ragged tiles, split, BOS, stride 2, 1x1, protected, every tile config (the opt-in FIXUP split-K
    ones too; their counters reset, or the next case would fail): Triton kernels (interpreted) vs reference."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "MIXDQ_FIXUP": "1"}  # the opt-in
    proc = subprocess.run([sys.executable, "tests/gpu/kernel_selfcheck.py", "--all_configs"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count("PASS") >= 80 and "FAIL" not in proc.stdout
    assert proc.stdout.count(" fixup int") >= 30  # FIXUP split-K on int8 codes, every weight format


REGIONS_CHECK = QUANT_UNET + """
import copy
from torch._dynamo.utils import counters
from quant_utils.runtime import compile_unet_regions
with torch.no_grad():
    ref = unet(**inputs).sample
for regions in ("transformers", "blocks"):
    torch._dynamo.reset()
    counters.clear()
    model = copy.deepcopy(unet)
    with torch.no_grad():
        twin = copy.deepcopy(model)
        n = compile_unet_regions(model, regions, backend="eager")
        out = model(**inputs).sample
        graphs = counters["stats"]["unique_graphs"]
        # a deep copy of the compiled UNet runs its own weights: its parts are bound to the copy, not to the original
        copied = copy.deepcopy(model)
        for m2 in (copied, twin):  # a weight that a transformer's compiled input part reads
            for m in m2.modules():
                if type(m).__name__ == "Transformer2DModel":
                    m.norm.weight *= 2.0
        moved = bool(torch.equal(copied(**inputs).sample, twin(**inputs).sample))
    print("regions", regions, n, "graphs", graphs, "same", bool(torch.equal(out, ref)), "copy", moved)
"""


def test_compiled_regions_share_graphs_across_same_shape_blocks():
    """compile_unet_regions compiles each resnet and transformer (or transformer block, plus each transformer's input and
    output parts); regions of one shape (different weights and quantizer parameters) must reuse one dynamo graph,
    not recompile per instance (28 regions -> 12 graphs on the tiny UNet, 56 -> 16 with `blocks`), the regions
    must compute what the uncompiled model does, and a deep copy must run its own weights."""
    lines = [ln.split() for ln in run_interpreted(REGIONS_CHECK).splitlines() if ln.startswith("regions")]
    assert [ln[1:3] for ln in lines] == [["transformers", "28"], ["blocks", "56"]], lines
    for _, _, n, _, graphs, _, same, _, copied in lines:
        assert int(graphs) < int(n) / 2 + 2 and same == "True" and copied == "True", lines


def test_compile_regions_refuses_an_unknown_choice():
    from quant_utils.runtime import compile_unet_regions

    with pytest.raises(ValueError, match="regions='layers'"):
        compile_unet_regions(torch.nn.Linear(2, 2), "layers")


def test_selfcheck_skips_an_opt_in_config_that_does_not_build_and_fails_everything_else(monkeypatch):
    """An opt-in (FIXUP) config that this Triton cannot compile is reported SKIP (the autotuner skips it too);
    the same error on a tuned-file config, or any other error (a fault, a wrong shape), still stops the check."""
    import pytest

    sys.path.insert(0, str(REPO / "tests" / "gpu"))
    import kernel_selfcheck as sc
    from quant_utils.kernels import backend, launch

    def broken(st, x):
        raise RuntimeError("PassManager::run failed")

    monkeypatch.setattr(backend, "forward", broken)
    case = sc.Case("linear", 48, 160, 8, 8, rows=300)
    row = sc.check_case(case, "cpu", cfg=launch._fixup(64, 128, 4, 4, True, 2))
    assert row["ok"] and "PassManager" in row["skipped"] and "SKIP (does not build" in sc.format_rows([row])
    with pytest.raises(RuntimeError, match="PassManager"):
        sc.check_case(case, "cpu", cfg=launch._cfg(128, 128, 8, 3))
    monkeypatch.setattr(backend, "forward", lambda st, x: (_ for _ in ()).throw(RuntimeError("illegal memory access")))
    with pytest.raises(RuntimeError, match="illegal"):
        sc.check_case(case, "cpu", cfg=launch._fixup(64, 128, 4, 4, True, 4))


def test_the_decoders_one_pass_kernel_compiles_for_sm90_vectorised_and_within_its_instruction_budget(tmp_path):
    """sass_report compiles norm_act_quant offline for sm_90 (Triton's bundled ptxas; no GPU): the fp16 / int8
    streams in 16-byte loads and stores, no spills, and the PTX math (ex2/rcp approximations, one cvt.rni) well under
    the plain tl ops' instruction count: the budget below which the pass can be memory-bound on an H200."""
    pytest.importorskip("triton.backends.nvidia")
    out = tmp_path / "sass.csv"
    assert run_main("utils/sass_report.py", "--out", out) == 0
    df = read_csv(out).set_index(["form", "ptx_math"])
    assert len(df) == 4 and (df["arch"] == "sm_90").all()
    assert (df["narrow_memory_ops"] == 0).all() and (df["vector_loads"] > 0).all() and (df["vector_stores"] > 0).all()
    assert (df["local_bytes"] == 0).all()
    resnet, upsampler = df.loc[("resnet norm + silu", True)], df.loc[("upsampler 2x", True)]
    assert resnet["per_element"] <= 24 and upsampler["per_element"] <= 13, df
    assert resnet["per_element"] < 0.8 * df.loc[("resnet norm + silu", False), "per_element"], df
    assert 1.9 <= resnet["mufu_per_element"] <= 2.1, df  # one ex2, one rcp: no division, no exp fix-ups
