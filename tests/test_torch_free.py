"""The YAML/ILP/performance-model/serving modules import without torch (a CPU box, a load-test client, the service's
front end): each is imported in a fresh interpreter in which importing torch, diffusers, transformers or triton
raises."""
import subprocess
import sys

import pytest

from conftest import REPO

TORCH_FREE = ["errors", "modes", "csvio", "bitconfig", "bit_allocation", "perf_model", "serving.policies",
              "serving.simulator", "serving.workloads", "serving.metrics", "serving.sweep", "serving.capacity",
              "serving.client"]

BLOCKED_IMPORT = """
import importlib, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "diffusers", "transformers", "triton"):
            raise ImportError(f"blocked: {name}")

sys.meta_path.insert(0, NoTorch())
importlib.import_module(sys.argv[1])
assert not {"torch", "diffusers"} & set(sys.modules), sorted(m for m in sys.modules if m.startswith("torch"))
"""


def _import_without_torch(module: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED_IMPORT, module], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("module", TORCH_FREE)
def test_imports_without_torch(module):
    proc = _import_without_torch(f"quant_utils.{module}")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_blocker_blocks():
    """The check can fail: a module that needs torch does not import under it."""
    proc = _import_without_torch("quant_utils.qlayers")
    assert proc.returncode != 0 and "blocked: torch" in proc.stderr
