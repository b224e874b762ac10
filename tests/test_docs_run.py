"""The docs' shell and Python examples run after the page's install, in an empty folder.

A page's install is ``pip install '.[cpu]'``, or what it says it needs
(:data:`PAGE_EXTRAS`: serving.md's examples need ``'.[cpu,serve]'``).

Every ``sh`` and ``python`` block of the pages runs, unless it visibly belongs
to a clone or to another install, or carries a marker on the line before its
fence:

* a clone or install block: a shell block with a ``make``, ``pip`` or
  ``.venv*/bin/...`` command (what a reader sees needs the checkout);
* ``<!-- not run: REASON -->``: a block that needs what this test does not
  have (a GPU, a cluster, object storage, another extra, a server that runs
  until stopped); the reason is required.

A page's blocks run in page order in one fresh empty folder, as a reader
following the page would run them, with the project's console scripts first on
``PATH``. A block passes when it exits 0 (shell blocks run with ``bash -e -o
pipefail``). A ``text`` block marked ``<!-- output -->`` is what the block
before it prints: each of its lines must appear in that block's stdout, in
order, with runs of spaces matching any spaces, ``...`` matching anything and a
decimal number any decimal number (:func:`matches`).

A block may leave a process in the background (``mnist-serve > serve.log 2>&1 &``,
then a block that waits for it to answer): every block runs in a process group
of its own, and the groups still alive are ended (SIGTERM, then SIGKILL) when the
page is done. A page whose blocks start ``mnist-serve`` talks to it on the ports
the docs use (:data:`SERVE_PORTS`); when one of them is taken here, the page is
skipped, saying so.

The cpu install has no torch (nor onnx, fastapi, ray, ...), and this test runs
in the development venv, which has them all: a ``sitecustomize`` makes every
module that only the other extras bring fail to import, as it would there (for
serving.md, every module that neither the cpu nor the serve extra brings).
``MNIST_EDGE_DOCS_CPU_VENV=DIR`` runs the blocks with a real cpu-only venv
instead (``python3 -m venv DIR && DIR/bin/pip install '.[cpu]'``), no guard, and
``MNIST_EDGE_DOCS_SERVE_VENV=DIR`` serving.md's with a real ``'.[cpu,serve]'`` one.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->")
OUTPUT = re.compile(r"<!--\s*output\s*-->")
BLOCK_TIMEOUT = 120
CPU = ("cpu",)
# The pages whose examples need more than the cpu extra, as they say.
PAGE_EXTRAS: dict[str, tuple[str, ...]] = {"serving.md": ("cpu", "serve")}
# extras -> the variable naming a real venv with that install (else: this venv, guarded)
REAL_VENVS = {CPU: "MNIST_EDGE_DOCS_CPU_VENV", ("cpu", "serve"): "MNIST_EDGE_DOCS_SERVE_VENV"}
SERVE_PORTS = (8000, 8001, 8002, 8003)  # mnist-serve's defaults, and serving.md's second server
STOP_TIMEOUT = 15


def extras_of(page: Path) -> tuple[str, ...]:
    return PAGE_EXTRAS.get(page.name, CPU)


def real_venv(extras: tuple[str, ...]) -> Path | None:
    folder = os.environ.get(REAL_VENVS[extras])
    return Path(folder).resolve() if folder else None


def bin_of(extras: tuple[str, ...]) -> Path:
    venv = real_venv(extras)
    return venv / "bin" if venv else Path(sys.executable).parent


CPU_VENV = real_venv(CPU)


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
def blocked_modules(extras: tuple[str, ...] = CPU) -> frozenset[str]:
    """Top-level modules installed here that no distribution of ``mnist-edge[extras]`` provides."""
    all_extras = set(md.metadata("mnist-edge").get_all("Provides-Extra") or [])
    installed = _closure("mnist-edge", set(extras))
    other = _closure("mnist-edge", all_extras - {"gpu", "openvino"}) - installed
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


def install_env(extras: tuple[str, ...], guards: Path) -> dict[str, str]:
    """The environment of ``pip install '.[extras]'``: our console scripts on PATH, other extras hidden."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{bin_of(extras)}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    if not real_venv(extras):
        guard = guards / "-".join(extras)
        guard.mkdir(exist_ok=True)
        blocked = sorted(blocked_modules(extras))
        (guard / "sitecustomize.py").write_text(GUARD.format(blocked=blocked))
        env["PYTHONPATH"] = str(guard)
    return env


@pytest.fixture(scope="module")
def guards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("install-guards")


@pytest.fixture(scope="module")
def cpu_env(guards: Path) -> dict[str, str]:
    return install_env(CPU, guards)


def run_block(
    block: Block, folder: Path, env: dict[str, str], groups: list[int] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one block in ``folder``; its process group goes into ``groups`` (see :func:`end_groups`)."""
    if block.language == "sh":
        command = ["bash", "-e", "-o", "pipefail", "-c", block.text]
    else:
        script = folder.parent / f"{folder.name}-block{block.line}.py"
        script.write_text(block.text, encoding="utf-8")
        command = [str(bin_of(extras_of(block.page)) / "python"), str(script)]
    with subprocess.Popen(
        command,
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: what it leaves behind can be ended
    ) as process:
        if groups is not None:
            groups.append(process.pid)
        try:
            stdout, stderr = process.communicate(timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def end_groups(groups: list[int]) -> None:
    """End what the blocks left running (a server in the background): SIGTERM, then SIGKILL."""
    for group in filter(_alive, groups):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(map(_alive, groups)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for group in filter(_alive, groups):
        os.killpg(group, signal.SIGKILL)


def taken_port(page: Path) -> int | None:
    """A port of :data:`SERVE_PORTS` already in use here, when ``page``'s blocks start mnist-serve."""
    if not any(re.search(r"^\s*mnist-serve\b", b.text, re.M) for b in runnable(page)):
        return None
    for port in SERVE_PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return port
    return None


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
def test_the_pages_examples_run_after_its_install(page: Path, tmp_path: Path, guards: Path) -> None:
    if (port := taken_port(page)) is not None:
        pytest.skip(f"port {port} is in use here; {page.name}'s examples serve on it")
    folder = tmp_path / "empty"
    folder.mkdir()
    shown = outputs(page)
    env, groups = install_env(extras_of(page), guards), []
    try:
        for block in runnable(page):
            _run_and_check(block, folder, env, groups, shown)
    finally:
        end_groups(groups)


def _run_and_check(
    block: Block, folder: Path, env: dict[str, str], groups: list[int], shown: dict[int, Block]
) -> None:
    done = run_block(block, folder, env, groups)
    assert done.returncode == 0, (
        f"{block.where} exited {done.returncode} in an empty folder after pip install "
        f"'.[{','.join(extras_of(block.page))}]':\n{block.text}--- stdout\n"
        f"{done.stdout[-2000:]}--- stderr\n{done.stderr[-3000:]}"
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
    assert names.get("serving.md", 0) >= 6, names  # the servers, curl, tritonclient.grpc
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


def test_the_serve_install_guard_hides_what_the_serve_extra_lacks(
    tmp_path: Path, guards: Path
) -> None:
    serve = ("cpu", "serve")
    if not real_venv(serve):
        blocked = blocked_modules(serve)
        assert {"torch", "onnx", "ray", "geventhttpclient"} <= blocked
        assert not {"fastapi", "uvicorn", "grpc", "tritonclient", "onnxruntime"} & blocked
    env = install_env(serve, guards)
    page = REPO / "docs" / "serving.md"
    probe = Block(page, 0, "python", "import tritonclient.grpc, fastapi\n", "")
    assert run_block(probe, tmp_path, env).returncode == 0
    probe = Block(page, 0, "python", "import tritonclient.http\n", "")
    done = run_block(probe, tmp_path, env)  # tritonclient[http]: the dev extra's
    assert done.returncode == 1 and "No module named" in done.stderr


def test_what_a_block_leaves_running_is_ended(tmp_path: Path, cpu_env: dict[str, str]) -> None:
    groups: list[int] = []
    block = Block(REPO / "README.md", 0, "sh", "sleep 300 > /dev/null 2>&1 &\n", "")
    assert run_block(block, tmp_path, cpu_env, groups).returncode == 0
    assert _alive(groups[0])
    end_groups(groups)
    assert not _alive(groups[0])


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
