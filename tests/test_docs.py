"""The README and the pages it links: short README, links that resolve, commands the scripts accept, one home per number."""
import argparse
import importlib.util
import itertools
import re
import shlex
import subprocess

import pytest

from conftest import REPO

DOCS = sorted({"README.md", "report/README.md", "scripts/device/README.md", "results/kernels_notes.md",
               *(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))})
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (but - and _), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def test_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) < 250


@pytest.mark.parametrize("doc", DOCS)
def test_every_link_resolves(doc):
    path = REPO / doc
    bad = []
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with that anchor in {dest.relative_to(REPO)}")
    assert not bad, bad


def _commands(text: str):
    """Each command (a list of words) of the bash blocks, continuation lines joined, split at ; && || | &."""
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lex.whitespace_split = True
            words = list(lex)
            cmd = []
            for w in words + [";"]:
                if w in (";", "&&", "||", "|", "&"):
                    if cmd:
                        yield cmd
                    cmd = []
                else:
                    cmd.append(w)


def _parser(script):
    """The script's argparse parser, caught as its parse_args() calls parse_args."""
    caught = {}

    def grab(self, *a, **k):
        caught["parser"] = self
        raise StopIteration

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = grab
    try:
        spec = importlib.util.spec_from_file_location(f"doc_{script.stem}", script)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        with pytest.raises(StopIteration):
            mod.parse_args([])
    finally:
        argparse.ArgumentParser.parse_args = original
    return caught["parser"]


def test_every_documented_command_is_accepted_by_its_script():
    """Scripts parse the documented flags and values; device jobs, make targets and test files exist."""
    makefile = (REPO / "Makefile").read_text()
    parsers, parsed_jobs, bad, n_scripts = {}, set(), [], 0
    for doc in DOCS:
        for cmd in _commands((REPO / doc).read_text()):
            where = f"{doc}: {' '.join(cmd)[:100]}"
            scripts = [i for i, w in enumerate(cmd) if w.endswith(".py") and "/" in w and "*" not in w]
            if cmd[0] == "make":
                bad += [f"{where}: no make target {t}" for t in cmd[1:] if not re.search(rf"^{t}:", makefile, re.M)]
            elif "bash" in cmd and cmd[cmd.index("bash") + 1].endswith(".sh"):
                sh = cmd[cmd.index("bash") + 1]
                if not (REPO / sh).is_file():
                    bad.append(f"{where}: no {sh}")
                elif sh not in parsed_jobs:  # a job's syntax, once per file (it runs only on the GPU machine)
                    parsed_jobs.add(sh)
                    proc = subprocess.run(["bash", "-n", str(REPO / sh)], capture_output=True, text=True)
                    bad += [f"{where}: {proc.stderr.strip()}"] if proc.returncode else []
            elif "pytest" in cmd:
                bad += [f"{where}: no test file {w}" for w in cmd if w.startswith("tests/") and not list(REPO.glob(w))]
            elif scripts:
                i = scripts[0]
                script = REPO / cmd[i]
                if not script.is_file():
                    bad.append(f"{where}: no {cmd[i]}")
                    continue
                if script.parts[-2] == "gpu":  # tests/gpu/*: CUDA-only, not imported here
                    continue
                parser = parsers.get(script) or parsers.setdefault(script, _parser(script))

                def refuse(message):
                    raise ValueError(message)
                parser.error = refuse
                try:
                    parser.parse_args(cmd[i + 1:])
                    n_scripts += 1
                except ValueError as e:
                    bad.append(f"{where}: {e}")
    assert not bad, "\n".join(bad)
    assert n_scripts >= 20  # the README alone documents more


def _precise_numbers(doc) -> dict[str, str]:
    """Numbers with 4+ significant digits in the prose and tables (not in commands, code or link targets)."""
    text = FENCE.sub("", (REPO / doc).read_text())
    text = re.sub(r"`[^`]*`|\]\([^)]*\)", " ", text)
    found = {}
    for m in re.finditer(r"(?<![\w.])\d+\.\d+(?![\w.]*\d)", text):
        if len(m.group().replace(".", "").lstrip("0")) >= 4:
            found.setdefault(m.group(), text[max(0, m.start() - 40):m.end() + 10].replace("\n", " "))
    return found


# the same digits from two different measurements (not a copied result), and which two
COINCIDENCES: dict[str, str] = {
    "10.25": "README: the W8A8 UNet at 512x1 in the v7 headline call (H200); report: the FP16 UNet step at 512x1 on the H100 (section 5)"}


def test_no_result_is_copied_into_two_documents():
    """A measured number has one home (the README's headline table, the report, or a docs page); others cite it."""
    nums = {doc: _precise_numbers(doc) for doc in DOCS}
    copies = [f"{n}: {a} [{nums[a][n]}] and {b} [{nums[b][n]}]"
              for a, b in itertools.combinations(DOCS, 2) for n in sorted(set(nums[a]) & set(nums[b]))
              if n not in COINCIDENCES]
    assert not copies, "\n".join(copies)
