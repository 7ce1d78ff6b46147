"""quant_utils/cli.py and errors.py across every script: the error guard, --help, the --exec device check."""
import argparse
import json
import runpy
import sys

import pandas as pd
import pytest
import torch

from conftest import REPO, run_main, run_script
from quant_utils.cli import HelpFormatter, user_errors
from quant_utils.errors import ConfigError, UserError, WeightsNotFoundError, reading

SCRIPTS = ["scripts/txt2img.py", "scripts/quant_txt2img.py", "scripts/latency_probe.py", "scripts/eval_grid.py",
           "scripts/load_test_stub.py", "scripts/bench_e2e.py", "scripts/bench_vae.py", "scripts/bench_kernels.py", "scripts/bench_simulator.py",
           "scripts/fit_perf_model.py", "scripts/plot_mixdq_queue_results.py", "scripts/eval_fp16_mixdq_cleanfid.py",
           "scripts/utils/coco_sample.py", "mixed_precision_scripts/bit_allocation.py",
           "mixed_precision_scripts/make_bit_configs.py", "mixed_precision_scripts/sensitivity.py",
           "scripts/bench_quantized_io.py", "scripts/utils/bench_trace.py", "scripts/utils/model_ops.py",
           "scripts/plot_kernels.py", "scripts/plot_e2e.py"]
HELP_ONLY = ["scripts/utils/bench_encode.py"]  # no user files to read: only argparse's own errors


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """One malformed input of each kind a user can hand a script."""
    d = tmp_path_factory.mktemp("bad")
    (d / "latin1.txt").write_bytes("a caf\xe9 on a street\n".encode("latin-1"))  # not UTF-8
    (d / "latin1.yaml").write_bytes("model.conv_in: 8  # caf\xe9\n".encode("latin-1"))
    (d / "tagged.yaml").write_text("model.conv_in: !!python/object/apply:os.system ['echo pwned']\n")
    (d / "empty.csv").write_text("")
    (d / "binary.csv").write_bytes(bytes(range(256)) * 4)
    (d / "trace.csv").write_text("arrival_s,res\n0.0,512\nabc,512\n")
    (d / "perf.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")

    class Evil:  # would run code if unpickled without weights_only
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save([Evil()], d / "protect.txt")  # a pickle by another name
    (d / "eval").mkdir()
    (d / "eval" / "manifest.csv").write_text("")
    return d


def bad_input(script: str, d) -> list[str]:
    """A representative user error of each script, one that stops it before any model is built."""
    return {
        "scripts/txt2img.py": ["--prompts_file", d / "latin1.txt"],
        "scripts/quant_txt2img.py": ["--wbits", 8, "--config_act_mp", d / "latin1.yaml"],
        "scripts/latency_probe.py": ["--mode", "w8a8", "--act_protect", d / "protect.txt"],
        "scripts/eval_grid.py": ["--config_weight_mp", d / "tagged.yaml"],
        "scripts/load_test_stub.py": ["--patterns", "trace", "--trace", d / "trace.csv"],
        "scripts/bench_vae.py": ["--res", 100],  # no GPU here, or (on a GPU) a bad resolution
        "scripts/bench_e2e.py": ["--res", 100],
        "scripts/bench_kernels.py": ["--gemm_points", "512xbig"],
        "scripts/bench_simulator.py": ["--perf_model", d / "perf.json"],
        "scripts/fit_perf_model.py": ["--csv", d / "empty.csv"],
        "scripts/plot_mixdq_queue_results.py": [d / "binary.csv"],
        "scripts/eval_fp16_mixdq_cleanfid.py": ["--fp16_folder", d / "eval", "--metrics", "pixel", "--out", d / "x.csv"],
        "scripts/utils/coco_sample.py": ["--captions", d / "absent.json", "--out_ref", d / "ref"],
        "mixed_precision_scripts/bit_allocation.py": ["--target_bits", 9, "--out_dir", d / "alloc"],
        "mixed_precision_scripts/make_bit_configs.py": ["--source_model", "sdxl_turbo_tiny", "--target_model", "sdxl_turbo"],
        "mixed_precision_scripts/sensitivity.py": ["--kind", "act", "--calib_prompts", d / "latin1.txt"],
        "scripts/bench_quantized_io.py": ["--config", d / "latin1.yaml"],
        "scripts/utils/bench_trace.py": ["--config", d / "tagged.yaml", "--out", d / "x.csv"],
        "scripts/utils/model_ops.py": ["--config", d / "binary.csv"],
        "scripts/plot_kernels.py": [d / "binary.csv"],
        "scripts/plot_e2e.py": [d / "empty.csv"],
    }[script]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_turns_an_input_error_into_one_error_line_and_exit_2(script, bad_files, capsys, monkeypatch):
    """The script's own `__main__` guard (run in-process): exit code 2, one `error: <file>: <reason>` line."""
    monkeypatch.setattr(sys, "argv", [script, *map(str, bad_input(script, bad_files))])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / script), run_name="__main__")
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1 and "Traceback" not in err, err
    assert not (bad_files / "alloc").exists() and not (bad_files / "ref").exists()  # nothing half-written


def test_the_guard_catches_the_class_of_user_errors_and_lets_bugs_through(tmp_path, capsys):
    for err in (ConfigError("bad flag"), WeightsNotFoundError("no weights")):
        with pytest.raises(SystemExit) as e, user_errors():
            raise err
        assert e.value.code == 2 and capsys.readouterr().err == f"error: {err}\n"
    for bug in (KeyError("spec"), ValueError("a bug"), FileNotFoundError("internal file")):
        with pytest.raises(type(bug)), user_errors():
            raise bug  # not a user error: the traceback stays
    # reading(): the decode/parse/IO failures of one user file become ConfigError('<what> <file>: <reason>')
    f = tmp_path / "f.json"
    f.write_text("{")
    with pytest.raises(ConfigError, match=r"^sensitivity state .*f\.json: not valid JSON") as e, reading(f, "sensitivity state"):
        json.loads(f.read_text())
    assert isinstance(e.value, UserError)
    with pytest.raises(ConfigError, match="does not exist"), reading(tmp_path / "absent.csv"):
        pd.read_csv(tmp_path / "absent.csv")
    with pytest.raises(ZeroDivisionError), reading(f):
        1 / 0  # noqa: B018 - a bug inside the block is not the file's fault


def _parser_of(script: str, monkeypatch) -> argparse.ArgumentParser:
    """The script's parser, caught as parse_args is called."""
    import importlib.util

    caught = {}

    def grab(self, *a, **k):
        caught["parser"] = self
        raise StopIteration

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    path = REPO / script
    spec = importlib.util.spec_from_file_location(f"help_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(StopIteration):
        mod.parse_args([])
    return caught["parser"]


@pytest.mark.parametrize("script", SCRIPTS + HELP_ONLY)
def test_help_lists_defaults_and_every_flag_has_help(script, monkeypatch):
    p = _parser_of(script, monkeypatch)
    assert p.formatter_class is HelpFormatter
    undocumented = [a.option_strings or a.dest for a in p._actions if not a.help]
    assert not undocumented, f"{script}: flags without help {undocumented}"
    assert "(default:" in p.format_help()
    # default outputs go under logs/: writing into results/ takes an explicit path
    outs = {a.dest: a.default for a in p._actions if a.dest in ("out", "out_dir", "out_csv", "summary_csv", "base_path",
                                                                    "profile_out", "out_prompts", "out_ref")}
    assert all(v is None or str(v).startswith("logs/") for v in outs.values()), outs


EXEC_SCRIPTS = {"txt2img.py": [], "quant_txt2img.py": ["--wbits", 8], "latency_probe.py": ["--mode", "w8a8"],
                "eval_grid.py": [], "load_test_stub.py": ["--live"], "bench_vae.py": [], "bench_kernels.py": [],
                "../mixed_precision_scripts/sensitivity.py": []}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("script", sorted(EXEC_SCRIPTS))
def test_exec_graph_without_cuda_is_refused_before_any_model_is_built(script, monkeypatch, capsys):
    import quant_utils.pipeline

    monkeypatch.setattr(quant_utils.pipeline, "build_pipeline", lambda *a, **k: pytest.fail("a model was built"))
    exec_flag = [] if "bench_kernels" in script else ["--exec", "graph"]
    assert run_main(script, *EXEC_SCRIPTS[script], *exec_flag) == 2
    assert "CUDA" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_exec_compile_without_cuda_as_a_user_meets_it():
    p = run_script("txt2img.py", "--exec", "compile", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == ["error: --exec compile runs CUDA graphs and needs a CUDA GPU; this "
                                            "machine has none (use --exec auto or eager)"]


def test_a_negative_dense_budget_is_refused_at_parse_time():
    p = run_script("txt2img.py", "--dense_budget", "-0.1", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "--dense_budget" in p.stderr
    assert "must be a finite number >= 0" in p.stderr


def test_vae_attention_flag_default_and_choices():
    import argparse

    from quant_utils.cli import add_model_args

    p = argparse.ArgumentParser()
    add_model_args(p)
    assert p.parse_args([]).vae_attention == "auto" and p.parse_args(["--vae_attention", "sdpa"]).vae_attention == "sdpa"
    with pytest.raises(SystemExit):
        p.parse_args(["--vae_attention", "flash"])
