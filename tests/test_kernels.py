"""quant_utils.kernels as a whole on the CPU: the Triton kernels themselves in the interpreter (every format and case
of the self-check), the kernel backend traced by torch.compile as one graph, compiled regions sharing graphs. The
modules' own tests: test_kernels_packing, _reference, _backend, _ops, _tuning."""
import os
import subprocess
import sys

from conftest import REPO


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


