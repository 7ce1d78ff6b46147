"""What a Triton kernel compiles to on a GPU this machine does not have: SASS instruction mix, registers, spills.

Device time is scarce; Triton compiles for any NVIDIA target offline (its bundled ptxas and cuobjdump), and the
instruction count per element says whether an elementwise pass can be memory-bound at all (an H200 SM issues
~128 thread-instructions per clock and reads ~15 bytes of HBM per clock), and the memory ops' widths whether its
loads and stores are vectorised. `scripts/utils/sass_report.py` prints it for the decoder's hot passes.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


@dataclass
class SassReport:
    opcodes: Counter  # SASS opcode (before the first '.') -> count
    memory_ops: Counter  # full LDG/STG/LDS/STS mnemonics (with widths) -> count
    registers: int
    local_bytes: int  # per-thread local memory (spills, stack arrays): 0 for a healthy elementwise kernel
    shared_bytes: int

    @property
    def instructions(self) -> int:
        return sum(self.opcodes.values())


def _tool(name: str) -> str:
    try:  # Triton >= 3.4 names its bundled CUDA tools here (TRITON_CUOBJDUMP_PATH overrides)
        return triton.knobs.nvidia.__getattribute__(name).path
    except Exception:
        return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def compile_sass(fn, signature: dict[str, str], constexprs: dict[str, object], divisible_by_16: Sequence[str] = (),
                 arch: int = 90, num_warps: int = 4, num_stages: int = 3) -> SassReport:
    """Compile the @triton.jit `fn` for sm_`arch` with the given argument types ('*fp16', 'i32', 'fp32', ...; the
    constexprs' values in `constexprs`) and the integer/pointer arguments Triton's launcher would find divisible by
    16 (it specialises on that, and vector widths depend on it), and read back its SASS."""
    names = list(signature)
    unknown = sorted(set(constexprs) - set(names)) + sorted(set(divisible_by_16) - set(names))
    if unknown:
        raise ValueError(f"compile_sass: {fn.__name__} has no argument(s) {unknown}")
    sig = {k: ("constexpr" if k in constexprs else t) for k, t in signature.items()}
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k in divisible_by_16}
    kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
                            target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        sass = subprocess.run([_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True,
                               check=True).stdout
    mnemonics = re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass)
    res = {k: int(v) for k, v in re.findall(r"(REG|LOCAL|SHARED|STACK):(\d+)", usage)}
    return SassReport(opcodes=Counter(m.split(".")[0] for m in mnemonics),
                      memory_ops=Counter(m for m in mnemonics if m.split(".")[0] in ("LDG", "STG", "LDS", "STS")),
                      registers=res.get("REG", 0), local_bytes=res.get("LOCAL", 0) + res.get("STACK", 0),
                      shared_bytes=res.get("SHARED", 0))
