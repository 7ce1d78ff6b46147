"""quant_utils/kernel_bench.py and scripts/bench_kernels.py on the CPU: argument parsing, the kernel variants a
UNet's layer calls need."""
import sys

import pytest

from conftest import REPO


def test_bench_kernels_exec_modes_parse_in_run_order():
    """bench_kernels runs CUDA-graph variants before compiled ones (compiling changes the model in place)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_kernels

    from quant_utils.errors import ConfigError

    assert bench_kernels.parse_args(["--unet_exec", "compile,graph"]).unet_exec == ["graph", "compile"]
    for bad in ("", "eager", "graph,jit"):
        with pytest.raises(ConfigError, match="unet_exec"):
            bench_kernels.parse_args(["--unet_exec", bad])


def test_formats_are_the_mode_tables_quantized_modes():
    from quant_utils.kernel_bench import FORMATS

    assert FORMATS == {"W8A8": 8, "W6A8": 6, "W4A8": 4}  # --formats, in the order of quant_utils.modes.QUANTIZED


def test_precompile_jobs_ask_plan_with_a_layer_spec():
    """The variants a UNet's layer calls need come from kernels.plan on a LayerSpec of each call (no stand-in
    layers): a conv the kernels do not take needs none, a linear its format's candidates, a cross-attention K/V
    linear (BOS rows) also the fp16-activation ones."""
    from quant_utils import kernel_bench as kb
    from quant_utils.kernels import launch

    conv_in = kb.LayerCall("conv_in", "conv", (1, 4, 64, 64), (320, 4, 3, 3), 1, 1)
    assert kb.layer_spec(conv_in, 8, 8, None, False).weight_shape == (320, 4, 3, 3)
    assert kb.precompile_jobs([conv_in], [8], {}) == []  # 4 input channels: the fp16 path
    q = kb.LayerCall("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "linear", (2, 1024, 640), (640, 640), 1, 0)
    k = kb.LayerCall("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", "linear", (2, 77, 2048), (640, 2048), 1, 0)
    pl = kb.kernels.plan(kb.layer_spec(q, 4, 8, None, False))
    assert kb.precompile_jobs([q], [4], {}) == sorted(set(launch.linear_jobs(2048, 640, pl.bits, pl.group, False)))
    jobs = kb.precompile_jobs([k], [8], {})
    assert any(j[3] for j in jobs) and any(not j[3] for j in jobs)  # int8 and fp16 (BOS) activations

