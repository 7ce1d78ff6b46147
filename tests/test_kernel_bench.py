"""quant_utils/kernel_bench.py and scripts/bench_kernels.py on the CPU: argument parsing, the kernel variants a
UNet's layer calls need."""
import sys

import numpy as np

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



def test_kernel_categories_file_inductor_kernels_by_what_they_fuse_not_as_cudnn():
    """Inductor names its fused kernels after their ops (`convolution`: a bias add, `qconv`: a quantize): they are
    norm/elementwise work, never cuDNN; cuDNN, cuBLAS and our kernels keep their categories; the table sums."""
    import pandas as pd

    from quant_utils.kernel_bench import category_table, kernel_category

    names = {
        "triton_poi_fused__to_copy_add_clamp_constant_pad_nd_div_permute_qconv_round_select_silu_slice_sub_48":
            "norm/elementwise + quantize, fused (Inductor)",
        "triton_red_fused__to_copy_add_clamp_div_native_layer_norm_qlinear_round_select_slice_view_5":
            "norm/elementwise + quantize, fused (Inductor)",
        "triton_poi_fused_add_convolution_div_native_group_norm_silu_54": "group/layer norm",
        "triton_poi_fused__to_copy__unsafe_index_add_arange_div_mul_unsqueeze_41": "elementwise, copies, other",
        "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1_g1": "conv fp16 (cuDNN)",
        "nvjet_sm90_hsh_64x64_64x13_4x2_h_bz_bias_TNT": "matmul fp16 (cuBLAS)",
        "triton_tem_fused_mm_3": "matmul fp16 (cuBLAS)",  # an Inductor GEMM template stays a GEMM
        "_qconv_kernel": "int8 conv (ours)", "_qlinear_kernel": "int8 GEMM (ours)",
        "_channel_moments_kernel": "group/layer norm", "_group_affine_kernel": "group/layer norm",  # GroupNorm's, ours
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7": "attention",
        "void at::native::vectorized_elementwise_kernel<4>": "elementwise, copies, other",
    }
    assert {n: kernel_category(n) for n in names} == names
    per_kernel = pd.DataFrame({"kernel": list(names), "gpu_ms": np.arange(1.0, len(names) + 1), "count": 2})
    table = category_table(per_kernel)
    assert table["gpu_ms"].sum() == pytest.approx(per_kernel["gpu_ms"].sum()) and table["share"].sum() == pytest.approx(1, abs=1e-3)
    assert table.set_index("category").loc["norm/elementwise + quantize, fused (Inductor)", "kernels"] == 4
    assert table["category"].is_unique and "conv fp16 (cuDNN)" in set(table["category"])


@pytest.mark.parametrize("flags, quantized, regions, fused", [
    ([], False, "transformers", True), ([], True, "blocks", True),
    (["--compile_regions", "transformers", "--fuse_qkv", "off"], True, "transformers", False)])
def test_compiled_unet_steps_take_the_serving_runners_form(monkeypatch, flags, quantized, regions, fused):
    """--unet_exec compile times each UNet as the serving Runner runs it: projections fused first, then blocks for
    a UNet with kernel layers and transformers for FP16 (--compile_regions auto); every compiled row says which.
    The graph rows run the model as built (nothing fused, nothing compiled)."""
    import copy

    sys.path.insert(0, str(REPO / "scripts"))
    import bench_kernels

    from conftest import fresh_pipe
    from quant_utils import runtime

    unet = copy.deepcopy(fresh_pipe().unet)
    if quantized:  # (stand-in: a UNet the Runner would see as holding kernel layers)
        monkeypatch.setattr(runtime, "kernel_layers", lambda m: [("down_blocks.0", m)])
    compiled = []
    monkeypatch.setattr(runtime, "compile_unet_regions", lambda m, r: compiled.append(r))
    args = bench_kernels.parse_args(["--unet_exec", "graph,compile", "--unet_points", "64x1", *flags])
    table = bench_kernels.StepTable.__new__(bench_kernels.StepTable)
    table.run = bench_kernels.Run(args, None, "cpu", "cpu", REPO / "logs", 0.0, None)
    seen = []
    monkeypatch.setattr(bench_kernels.StepTable, "point",
                        lambda self, name, model, ex, res, batch, wbytes, paths: seen.append((ex, dict(self.form))))
    table.measure("fp16", unet, 0, "")
    n_attn = sum(type(m).__name__ == "Attention" for m in unet.modules())
    assert seen[0] == ("graph", dict(compile_regions="", fused_attentions=0))
    assert seen[1] == ("compile", dict(compile_regions=regions, fused_attentions=n_attn if fused else 0))
    assert compiled == [regions]


def test_plot_kernels_reads_unet_step_csvs_and_refuses_a_point_from_two_runs(tmp_path, capsys):
    """plot_kernels.py: one figure from several runs' CSVs (each run keeps its own FP16 baseline); a quantized point in
    two CSVs is refused unless --keep first; a CSV of another kind is one error line."""
    import pandas as pd

    from conftest import run_main
    from quant_utils.csvio import provenance, write_csv

    def run_csv(name: str, points: list[tuple[int, int]], fmts: tuple[str, ...]) -> object:
        rows = [{"variant": f"{f} kernel (compiled blocks + CUDA graph)" if f != "fp16" else "fp16 (compiled blocks + CUDA graph)",
                 "exec": "compile", "res": r, "batch": b, "p50_ms": 10.0 * b * (r / 512) ** 2,
                 "speedup_same_exec": 1.0 if f == "fp16" else 0.9 + 0.1 * b, "weight_ratio": {"fp16": 1.0, "W8A8": 0.506, "W4A8": 0.256}[f]}
                for f in ("fp16", *fmts) for r, b in points]
        return write_csv(pd.DataFrame(rows), tmp_path / name, provenance(script="bench_kernels", device="Test GPU"))

    a = run_csv("a.csv", [(512, 1), (1024, 4)], ("W8A8",))
    b = run_csv("b.csv", [(512, 1), (768, 1)], ("W4A8",))
    c = run_csv("c.csv", [(512, 1)], ("W8A8",))
    png = tmp_path / "k.png"
    assert run_main("plot_kernels.py", a, b, "--out", png) == 0 and png.stat().st_size > 10_000
    assert run_main("plot_kernels.py", a, c, "--out", png) == 2
    assert "W8A8 at 512x1 is also in" in capsys.readouterr().err
    assert run_main("plot_kernels.py", a, c, "--keep", "first", "--out", png) == 0
    assert "a.csv's row kept, c.csv's left out" in capsys.readouterr().out
    assert run_main("plot_kernels.py", a, "--exec", "graph", "--out", png) == 2  # nothing of that execution
    other = write_csv(pd.DataFrame({"x": [1]}), tmp_path / "other.csv", provenance(script="t"))
    assert run_main("plot_kernels.py", other) == 2
