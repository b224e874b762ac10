"""The docs' shell and Python examples run after ``pip install '.[cpu]'``, in an empty folder.

Every ``sh`` and ``python`` block of the pages runs, unless it visibly belongs
to a clone or to another install, or carries a marker on the line before its
fence:

* a clone or install block: a shell block with a ``make``, ``pip`` or
  ``.venv*/bin/...`` command (what a reader sees needs the checkout);
* ``<!-- not run: REASON -->``: a block that needs what this test does not
  have (a GPU, a cluster, object storage, another extra); the reason is required.

A page's blocks run in page order in one fresh empty folder, as a reader
following the page would run them, with the project's console scripts first on
``PATH``. A block passes when it exits 0 (shell blocks run with ``bash -e -o
pipefail``). A ``text`` block marked ``<!-- output -->`` is what the block
before it prints: each of its lines must appear in that block's stdout, in
order, with runs of spaces matching any spaces, ``...`` matching anything and a
decimal number any decimal number (:func:`matches`).

The cpu install has no torch (nor onnx, fastapi, ray, ...), and this test runs
in the development venv, which has them all: a ``sitecustomize`` makes every
module that only the other extras bring fail to import, as it would there.
``MNIST_EDGE_DOCS_CPU_VENV=DIR`` runs the blocks with a real cpu-only venv
instead (``python3 -m venv DIR && DIR/bin/pip install '.[cpu]'``), no guard.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# serving.md's examples talk to a running mnist-serve (the serve extra); they are not run here.
NOT_COVERED = {"serving.md"}
PAGES = [
    REPO / "README.md",
    *(p for p in sorted((REPO / "docs").glob("*.md")) if p.name not in NOT_COVERED),
]
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->")
OUTPUT = re.compile(r"<!--\s*output\s*-->")
BLOCK_TIMEOUT = 120
CPU_VENV = os.environ.get("MNIST_EDGE_DOCS_CPU_VENV")
BIN = Path(CPU_VENV).resolve() / "bin" if CPU_VENV else Path(sys.executable).parent


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence
    language: str
    text: str
    marker: str  # the HTML comment on the line before the fence, or ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    found, lines = [], page.read_text(encoding="utf-8").splitlines()
    number = 0
    while number < len(lines):
        line = lines[number]
        if line.startswith("```"):
            language, start = line[3:].strip(), number
            marker = (
                lines[number - 1].strip() if number and lines[number - 1].startswith("<!--") else ""
            )
            end = next(i for i in range(number + 1, len(lines)) if lines[i].startswith("```"))
            text = "\n".join(lines[number + 1 : end]) + "\n"
            found.append(Block(page, start + 1, language, text, marker))
            number = end
        number += 1
    return found


CLONE_COMMAND = re.compile(
    r"^\s*(?:[A-Z_]+=\S+\s+)*(?:make|pip|\.venv[\w-]*/bin/\S+)(?:\s|$)", re.M
)


def is_clone_block(block: Block) -> bool:
    """A shell block that visibly needs the checkout or installs: make, pip or .venv*/bin commands."""
    commands = re.split(r"[|;&]+|\n", block.text.replace("\\\n", " "))
    return block.language == "sh" and any(CLONE_COMMAND.match(c) for c in commands)


def runnable(page: Path) -> list[Block]:
    return [
        b
        for b in blocks(page)
        if b.language in ("sh", "python")
        and not NOT_RUN.fullmatch(b.marker)
        and not is_clone_block(b)
    ]


def outputs(page: Path) -> dict[int, Block]:
    """Fence line of a run block -> the ``<!-- output -->`` text block right after it."""
    found, previous = {}, None
    for block in blocks(page):
        if OUTPUT.fullmatch(block.marker):
            assert block.language == "text", f"{block.where}: an output block is a text block"
            assert previous is not None and previous in runnable(page), (
                f"{block.where}: an output block must follow a block that runs"
            )
            found[previous.line] = block
        previous = block
    return found


# --- what the cpu install lacks ----------------------------------------------------------


def _requirements(dist: str, extras: set[str]) -> set[tuple[str, frozenset[str]]]:
    """(distribution, its extras) that ``dist[extras]`` requires and that are installed here."""
    try:
        requires = md.requires(dist) or []
    except md.PackageNotFoundError:
        return set()
    found = set()
    for text in requires:
        req = Requirement(text)
        wanted = req.marker is None or any(
            req.marker.evaluate({"extra": e}) for e in (extras or {""}) | {""}
        )
        if wanted:
            found.add((canonicalize_name(req.name), frozenset(req.extras)))
    return found


def _closure(dist: str, extras: set[str]) -> set[str]:
    """Every installed distribution ``dist[extras]`` pulls in, itself included."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(canonicalize_name(dist), frozenset(extras))]
    while todo:
        item = todo.pop()
        if item not in seen:
            seen.add(item)
            todo += _requirements(item[0], set(item[1]))
    return {name for name, _ in seen if _installed(name)}


def _installed(name: str) -> bool:
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        return False
    return True


@cache
def blocked_modules() -> frozenset[str]:
    """Top-level modules installed here that no distribution of ``mnist-edge[cpu]`` provides."""
    all_extras = set(md.metadata("mnist-edge").get_all("Provides-Extra") or [])
    cpu = _closure("mnist-edge", {"cpu"})
    other = _closure("mnist-edge", all_extras - {"gpu", "openvino"}) - cpu
    return frozenset(
        module
        for module, dists in md.packages_distributions().items()
        if all(canonicalize_name(d) in other for d in dists) and not module.startswith("_")
    )


GUARD = """\
import sys

BLOCKED = {blocked!r}


class _NotInTheCpuInstall:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(
                f"No module named {{name!r}} (pip install '.[cpu]' has none)", name=name
            )
        return None


sys.meta_path.insert(0, _NotInTheCpuInstall())
"""


@pytest.fixture(scope="module")
def cpu_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a cpu-only install: our console scripts on PATH, other extras hidden."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    if not CPU_VENV:
        guard = tmp_path_factory.mktemp("cpu-guard")
        (guard / "sitecustomize.py").write_text(GUARD.format(blocked=sorted(blocked_modules())))
        env["PYTHONPATH"] = str(guard)
    return env


def run_block(block: Block, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if block.language == "sh":
        command = ["bash", "-e", "-o", "pipefail", "-c", block.text]
    else:
        script = folder.parent / f"{folder.name}-block{block.line}.py"
        script.write_text(block.text, encoding="utf-8")
        command = [str(BIN / "python"), str(script)]
    return subprocess.run(
        command,
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
        check=False,
    )


DECIMAL = re.compile(r"(\d+\.\d+)")


def _word(word: str) -> str:
    """A regex for one shown word: its decimals stand for any decimal, the rest is literal."""
    return "".join(
        r"\d+\.\d+" if DECIMAL.fullmatch(piece) else re.escape(piece)
        for piece in DECIMAL.split(word)
    )


def matches(expected: str, actual: str) -> str | None:
    """None when every line of ``expected`` appears in ``actual`` in order, else the first missing one.

    The substance must match: words, labels, integers, columns. A decimal number shown
    (a confidence, a size) stands for any decimal number, since the digits a model gives
    move with the ONNX Runtime build, the CPU and the drawn pictures' rendering.
    """
    lines = iter(actual.splitlines())
    for want in expected.strip("\n").splitlines():
        parts = [r"\s+".join(map(_word, p.split())) for p in want.strip().split("...")]
        pattern = re.compile(r"\s*" + ".*".join(parts) + r"\s*")
        if not any(pattern.fullmatch(line) for line in lines):
            return want
    return None


# --- the tests ---------------------------------------------------------------------------

RUN_PAGES = [p for p in PAGES if runnable(p)]


@pytest.mark.parametrize("page", RUN_PAGES, ids=[p.name for p in RUN_PAGES])
def test_the_pages_examples_run_after_a_cpu_install(
    page: Path, tmp_path: Path, cpu_env: dict[str, str]
) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    shown = outputs(page)
    for block in runnable(page):
        done = run_block(block, folder, cpu_env)
        assert done.returncode == 0, (
            f"{block.where} exited {done.returncode} in an empty folder after pip install "
            f"'.[cpu]':\n{block.text}--- stdout\n{done.stdout[-2000:]}--- stderr\n{done.stderr[-3000:]}"
        )
        if block.line in shown:
            missing = matches(shown[block.line].text, done.stdout)
            assert missing is None, (
                f"{shown[block.line].where}: the output shown is not what {block.where} prints; "
                f"no line like {missing!r} in:\n{done.stdout}"
            )


def test_the_examples_a_pip_user_relies_on_are_run() -> None:
    """The tour and the inference page have blocks that run; every skipped block says why."""
    names = {p.name: len(runnable(p)) for p in RUN_PAGES}
    assert names.get("README.md", 0) >= 2 and names.get("inference.md", 0) >= 3, names
    for page in PAGES:
        for block in blocks(page):
            assert not block.marker.startswith("<!-- not run") or NOT_RUN.fullmatch(block.marker), (
                f"{block.where}: write the marker as <!-- not run: REASON -->"
            )
            if m := NOT_RUN.fullmatch(block.marker):
                assert m.group(1), f"{block.where}: say why the block is not run"
        outputs(page)  # output blocks follow a block that runs


def test_the_cpu_install_guard_hides_the_other_extras(
    tmp_path: Path, cpu_env: dict[str, str]
) -> None:
    if not CPU_VENV:
        blocked = blocked_modules()
        assert {"torch", "onnx", "fastapi", "ray"} <= blocked
        assert not {"numpy", "onnxruntime", "PIL", "click", "mnist_edge"} & blocked
    for module in ("torch", "onnx", "fastapi"):
        probe = Block(REPO / "README.md", 0, "python", f"import {module}\n", "")
        done = run_block(probe, tmp_path, cpu_env)
        assert done.returncode == 1 and f"No module named '{module}'" in done.stderr
    probe = Block(REPO / "README.md", 0, "sh", "mnist-infer --version\n", "")
    done = run_block(probe, tmp_path, cpu_env)
    assert done.returncode == 0 and done.stdout.startswith("mnist-infer")


def test_clone_blocks_are_told_apart() -> None:
    def kind(text: str) -> bool:
        return is_clone_block(Block(REPO / "README.md", 1, "sh", text, ""))

    assert kind("make train export\n") and kind(".venv/bin/mnist-infer images/\n")
    assert kind("pip install '.[cpu]'   # the runtime\n")
    assert kind("mnist-samples pics\nWEB_PORT=1 make web\n")
    assert not kind("mnist-samples pics && mnist-infer pics/   # make it so\n")
    assert matches("path   label ...\nb 7", "x\npath label confidence\na 1\nb  7\n") is None
    assert matches("b 7\npath", "path label\nb 7\n") == "path"
    assert matches("a.png  7  0.9999  7:0.9999", "a.png 7 0.9812 7:0.9812") is None
    assert matches("a.png  7  0.9999", "a.png 1 0.9999") == "a.png  7  0.9999"
    assert matches("size 139.9 KiB", "size 140 KiB") == "size 139.9 KiB"
