import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "gpu"))  # kernel_selfcheck: the kernel checks the CPU and GPU tests share
TINY = "configs/stable-diffusion/sdxl_turbo_tiny.yaml"


def run_script(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run scripts/<script> as a user would (subprocess, repo root as cwd)."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_pipe():
    from quant_utils.pipeline import build_pipeline, load_model_config

    return build_pipeline(load_model_config(TINY))


@pytest.fixture(scope="session")
def perf():
    """A performance model fitted on a noiseless synthetic latency table (the serving tests' GPU)."""
    from quant_utils.perf_model import PerfModel, synthetic_latency_frame

    return PerfModel.fit(synthetic_latency_frame(noise=0.0), with_loo=False)


@pytest.fixture(scope="session")
def perf_json(tmp_path_factory, perf):
    return perf.save(tmp_path_factory.mktemp("pm") / "perf_model_synthetic.json")


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("a red bicycle leaning on a wall\na bowl of fruit on a table\na dog running on a beach\n")
    return p


def run_main(script: str, *args: str) -> int:
    """Run a script's main() in this process (imports stay warm: much faster than a subprocess).

    Returns the exit code the script would have (0, or 2 for a user error reported by user_errors)."""
    import importlib.util

    from quant_utils.cli import user_errors

    path = REPO / "scripts" / script
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        with user_errors():
            mod.main(mod.parse_args([str(a) for a in args]))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def dead_pid() -> int:
    """The pid of a process that has exited (a writer killed mid-save)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid
