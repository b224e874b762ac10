"""The README and docs/ stay true to the code.

* Every fenced code block names its language; Python blocks pass ``ruff check``
  with the project's settings, shell blocks parse with ``bash -n``, JavaScript
  blocks with ``node --check`` (where node is installed).
* Every option the pages show for one of our commands exists: in command lines
  (code blocks and inline code: ``mnist-infer --top-k 3``, ``make export
  ARGS='--ort'``, ``python -m mnist_edge...``, ``.venv/bin/python bench.py ...``),
  in the option tables (a table whose first column is "option" belongs to the
  command its heading names), and as lone inline options (``--pixels-images``),
  which must belong to one of our commands or to the short list of other tools'
  options below.
* Every ``make`` target and variable the pages use exists in the Makefile.
* Every relative link and image resolves, anchors included, and every repository
  path shown in inline code (``runtime/images.py``) exists.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    *[p for p in [REPO / "export" / "README.md"] if p.exists()],
]
LANGUAGES = {"python", "sh", "js", "c", "text"}

# Options of other tools that the pages show as lone inline code, and where they come from.
FOREIGN_OPTIONS = {
    "--include_ops_by_config": "ONNX Runtime's build.sh (minimal builds)",
    "--ios": "ONNX Runtime's build.sh",
    "-lonnxruntime": "the C linker flag",
}
# Folders whose paths in inline code must exist (made-by-command folders are not here).
SOURCE_DIRS = ("runtime/", "train/", "export/", "tests/", "bench/", "docs/", ".ci/")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    text: str


def ids(page: Path) -> str:
    return str(page.relative_to(REPO))


def blocks(page: Path) -> list[Block]:
    found, lines = [], page.read_text(encoding="utf-8").splitlines()
    start, language, body = 0, "", []
    inside = False
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            if inside:
                found.append(Block(page, start, language, "\n".join(body) + "\n"))
                inside = False
            else:
                inside, start, language, body = True, number, line[3:].strip(), []
        elif inside:
            body.append(line)
    assert not inside, f"{ids(page)}:{start}: code block never closed"
    return found


def prose(page: Path) -> str:
    """The page without its fenced code blocks (line count kept)."""
    out, inside = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = not inside
            out.append("")
        else:
            out.append("" if inside else line)
    return "\n".join(out)


def spans(text: str) -> list[str]:
    """Inline code, including spans that wrap onto the next line."""
    return [" ".join(s.split()) for s in re.findall(r"`([^`]+?)`", text) if "\n\n" not in s]


# --- our commands and their real options -------------------------------------------------


def click_options(command: click.Command) -> set[str]:
    """The option names a user is meant to type (hidden ones and old aliases left out)."""
    names: set[str] = set()
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            names.update(param.opts, param.secondary_opts)
            # old spellings kept as hidden aliases are not for the docs to show
            names.difference_update(getattr(param, "aliases", ()))
    help_option = command.get_help_option(click.Context(command))
    if help_option is not None:
        names.update(help_option.opts)
    return names


@cache
def console_commands() -> dict[str, set[str]]:
    """Each console script of the installed project -> its click options."""
    found = {}
    for ep in entry_points(group="console_scripts"):
        if ep.module.startswith("mnist_edge."):
            command = ep.load()
            assert isinstance(command, click.Command), ep.name
            found[ep.name] = click_options(command)
    # `mnist-infer --engine ray ...` hands its command line to the Ray front end
    from mnist_edge.runtime.scale.cli import command as ray_command

    found["mnist-infer"] |= click_options(ray_command)
    assert {"mnist-train", "mnist-export", "mnist-infer", "mnist-serve"} <= set(found)
    return found


@cache
def module_options(module: str) -> set[str] | None:
    """``python -m MODULE``'s click options, or None when it is not ours or not click."""
    if not module.startswith("mnist_edge."):
        return None
    if importlib.util.find_spec(module) is None:
        return {"(no such module)"}
    command = getattr(importlib.import_module(module), "main", None)
    return click_options(command) if isinstance(command, click.Command) else None


@cache
def script_options(path: str) -> set[str] | None:
    """A repository script's argparse options, read from its source."""
    script = REPO / path
    if not script.is_file():
        return None
    source = script.read_text(encoding="utf-8")
    names = set(re.findall(r"add_argument\(\s*\"(-[\w-]+)\"", source))
    # BooleanOptionalAction adds the --no- form.
    for name in re.findall(r"add_argument\(\s*\"(--[\w-]+)\"[^)]*BooleanOptionalAction", source):
        names.add("--no-" + name[2:])
    return names | {"-h", "--help"}


@cache
def makefile() -> tuple[dict[str, list[str]], set[str]]:
    """Makefile targets -> their recipe lines, and the variables it assigns."""
    targets: dict[str, list[str]] = {}
    variables: set[str] = set()
    current: list[str] | None = None
    for line in (REPO / "Makefile").read_text(encoding="utf-8").splitlines():
        if line.startswith("\t") and current is not None:
            current.append(line.strip())
            continue
        if m := re.match(r"([A-Z_]+)\s*[?:+]?=", line):
            variables.add(m.group(1))
            current = None
        elif m := re.match(r"([a-z][\w./-]*(?:\s+[a-z][\w./-]*)*)\s*:(?!=)", line):
            current = []
            for name in m.group(1).split():
                targets[name] = current
        else:
            current = None
    return targets, variables


def options_of(words: list[str]) -> tuple[str, set[str] | None, list[str]] | None:
    """(command name, its options or None when unknown, the words after it) for one
    simple command, or None when it is not one of ours."""
    while words and re.match(r"[A-Za-z_]+=", words[0]):  # VAR=value cmd ...
        words = words[1:]
    if not words:
        return None
    program = Path(words[0]).name
    if program in console_commands():
        return program, console_commands()[program], words[1:]
    if re.fullmatch(r"python3?", program) and len(words) > 1:
        if words[1] == "-m" and len(words) > 2:
            return words[2], module_options(words[2]), words[3:]
        if words[1].endswith(".py"):
            return words[1], script_options(words[1]), words[2:]
    return None


def make_command(target: str) -> list[str] | None:
    """The words of the recipe line of ``target`` that takes $(ARGS), make's variables
    replaced by what they name (``$(BIN)/mnist-export`` -> ``mnist-export``)."""
    recipe = makefile()[0].get(target, [])
    for line in recipe:
        if "$(ARGS)" in line:
            line = re.sub(
                r"\$\((BIN|GPU_PYTHON)\)/?", lambda m: "" if m[1] == "BIN" else "python", line
            )
            return shlex.split(line.replace("$(ARGS)", ""))
    return None


@dataclass(frozen=True)
class Use:
    where: str
    command: str
    option: str
    known: set[str] | None


def uses_in_words(words: list[str], where: str) -> list[Use]:
    found: list[Use] = []
    if words and words[0] == "make":
        for word in words[1:]:
            if m := re.fullmatch(r"ARGS=(.*)", word, flags=re.S):
                for target in (w for w in words[1:] if "=" not in w and not w.startswith("-")):
                    recipe = make_command(target)
                    if recipe is not None:
                        found += uses_in_words(recipe + shlex.split(m.group(1)), where)
        return found
    parsed = options_of(words)
    if parsed is None:
        return found
    command, known, rest = parsed
    if known == {"(no such module)"}:
        return [Use(where, command, "(no such module)", set())]
    for word in rest:
        if word.startswith("-") and word != "-":
            found.append(Use(where, command, word.split("=", 1)[0], known))
    return found


def shell_commands(text: str) -> list[list[str]]:
    """Simple commands of a shell snippet: continuation lines joined, comments dropped,
    split at | ; & && ||."""
    lexer = shlex.shlex(text.replace("\\\n", " "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set("|;&()\n"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def snippets(page: Path) -> list[tuple[str, str]]:
    """(where, shell text): each line of the shell blocks (continuations joined), and
    each inline code span."""
    found = []
    for block in blocks(page):
        if block.language == "sh":
            for line_no, line in enumerate(block.text.replace("\\\n", " ").splitlines()):
                found.append((f"{ids(page)}:{block.line + 1 + line_no}", line))
    found += [(f"{ids(page)}: `{span}`", span) for span in spans(prose(page))]
    return found


def commands_in(page: Path) -> list[tuple[str, list[str]]]:
    """(where, words) for every simple command the page shows."""
    found = []
    for where, text in snippets(page):
        try:
            found += [(where, words) for words in shell_commands(text)]
        except ValueError:  # not shell (unbalanced quotes in prose code)
            continue
    return found


def command_uses(page: Path) -> list[Use]:
    return [use for where, words in commands_in(page) for use in uses_in_words(words, where)]


def table_uses(page: Path) -> list[Use]:
    """Options in tables whose first column is "option", for the command that the
    nearest heading above names."""
    found: list[Use] = []
    heading_command: str | None = None
    table_command: str | None = None
    for line_no, line in enumerate(prose(page).splitlines(), 1):
        if not line.startswith("|"):
            table_command = None
            if line.startswith("#"):
                named = [c for c in console_commands() if f"`{c}" in line]
                heading_command = named[0] if named else heading_command
            continue
        if line.startswith("| option |"):
            assert heading_command, f"{ids(page)}:{line_no}: option table under no command heading"
            table_command = heading_command
        elif table_command is not None:
            for span in spans(line.split("|")[1]):
                for name in span.split()[0].split("/"):
                    if name.startswith("-"):
                        where = f"{ids(page)}:{line_no}"
                        found.append(
                            Use(where, table_command, name, console_commands()[table_command])
                        )
    return found


def all_known_options() -> set[str]:
    """Every option of our console commands and of the modules and scripts make runs."""
    names = set().union(*console_commands().values())
    for recipe in makefile()[0].values():
        for line in recipe:
            for module in re.findall(r"-m (mnist_edge\.[\w.]+)", line):
                names |= module_options(module) or set()
            for script in re.findall(r"\s([\w/]+\.py)\b", line):
                names |= script_options(script) or set()
    return names


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, repeated headings numbered as GitHub does."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose(page).splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            base = slug(m.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


# --- the tests ---------------------------------------------------------------------------

pages = pytest.mark.parametrize("page", PAGES, ids=ids)


def test_the_pages_exist() -> None:
    names = {p.name for p in PAGES if p.parent.name == "docs"}
    assert {"README.md", "training.md", "export.md", "inference.md", "model-card.md"} <= names
    assert (REPO / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^license = .*"MIT"', pyproject, flags=re.M), (
        "LICENSE and pyproject.toml differ"
    )


def test_readme_is_a_front_door() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250, "README.md: keep it a front door; move detail to docs/"
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)", text))
    missing = {p.name for p in PAGES if p.parent.name == "docs"} - linked
    assert not missing, f"README.md links to no {sorted(missing)}"


def test_docs_index_lists_every_page() -> None:
    index = REPO / "docs" / "README.md"
    linked = set(re.findall(r"\]\(([\w.-]+\.md)", index.read_text(encoding="utf-8")))
    missing = {p.name for p in PAGES if p.parent.name == "docs"} - linked - {"README.md"}
    assert not missing, f"docs/README.md lists no {sorted(missing)}"


@pages
def test_code_blocks_name_a_language(page: Path) -> None:
    bad = [
        f"{ids(b.page)}:{b.line} {b.language!r}"
        for b in blocks(page)
        if b.language not in LANGUAGES
    ]
    assert not bad, f"code blocks need one of {sorted(LANGUAGES)}: {bad}"


@pages
def test_python_blocks_lint(page: Path) -> None:
    for block in (b for b in blocks(page) if b.language == "python"):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "ruff",
                "check",
                "--quiet",
                "--no-cache",
                "--output-format",
                "concise",
                "--stdin-filename",
                str(REPO / "docs" / "block.py"),
                "-",
            ],
            input=block.text,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"{ids(page)}:{block.line}:\n{result.stdout}{result.stderr}"


@pages
def test_shell_blocks_parse(page: Path) -> None:
    for block in (b for b in blocks(page) if b.language == "sh"):
        result = subprocess.run(
            ["bash", "-n"],
            input=block.text,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, f"{ids(page)}:{block.line}: {result.stderr}"


@pages
def test_javascript_blocks_parse(page: Path, tmp_path: Path) -> None:
    scripts = [b for b in blocks(page) if b.language == "js"]
    if not scripts:
        return
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: JavaScript blocks not checked")
    for block in scripts:
        script = tmp_path / f"block{block.line}.mjs"
        script.write_text(block.text, encoding="utf-8")
        result = subprocess.run(
            [node, "--check", str(script)], capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 0, f"{ids(page)}:{block.line}: {result.stderr}"


@pages
def test_options_shown_exist(page: Path) -> None:
    uses = command_uses(page) + table_uses(page)
    bad = [
        f"{u.where}: {u.command}: no such module"
        if u.option == "(no such module)"
        else f"{u.where}: {u.command} has no {u.option}"
        for u in uses
        if u.known is not None and u.option not in u.known
    ]
    assert not bad, "\n".join(bad)


def test_every_option_is_documented() -> None:
    """The reverse check: each option of our commands appears in some page."""
    shown = set()
    for page in PAGES:
        for span in spans(prose(page)) + [b.text for b in blocks(page)]:
            shown.update(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", span))
    missing = [
        f"{command} {option}"
        for command, options in sorted(console_commands().items())
        for option in sorted(options - {"-h", "--help"})
        if option not in shown
    ]
    assert not missing, (
        f"options in no page (document them, e.g. in the command's option table): {missing}"
    )


def test_every_make_target_is_documented() -> None:
    """The reverse check for make: each target ``make help`` lists appears as ``make TARGET``."""
    shown = {
        w
        for page in PAGES
        for _, words in commands_in(page)
        if words[0] == "make"
        for w in words[1:]
    }
    for page in PAGES:  # table cells such as `make lint` / `make format`
        shown.update(re.findall(r"`make ([\w-]+)", prose(page)))
    listed = re.findall(
        r"^([a-z][\w-]*):.*## ", (REPO / "Makefile").read_text(encoding="utf-8"), re.M
    )
    missing = sorted(set(listed) - shown)
    assert not missing, f"make targets in no page: {missing}"


@pages
def test_lone_options_exist(page: Path) -> None:
    known = all_known_options() | set(FOREIGN_OPTIONS)
    bad = []
    for span in spans(prose(page)):
        first = re.split(r"[\s|]", span)[0]
        for name in first.split("/"):
            if name.startswith("-") and name != "-" and name.split("=")[0] not in known:
                bad.append(f"`{span}`")
    assert not bad, f"{ids(page)}: options no command of ours has: {bad}"


@pages
def test_make_targets_and_variables_exist(page: Path) -> None:
    targets, variables = makefile()
    bad = []
    for where, words in commands_in(page):
        if words[0] != "make":
            continue
        for word in words[1:]:
            if "=" in word:
                if word.split("=", 1)[0] not in variables:
                    bad.append(f"{where}: variable {word.split('=', 1)[0]}")
            elif not word.startswith("-") and word not in targets:
                bad.append(f"{where}: target {word}")
    assert not bad, "not in the Makefile:\n" + "\n".join(bad)


@pages
def test_links_resolve(page: Path) -> None:
    text = re.sub(r"`[^`]*`", "", prose(page))
    bad = []
    for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            bad.append(
                f"{target} (no {resolved.relative_to(REPO) if resolved.is_relative_to(REPO) else resolved})"
            )
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            bad.append(f"{target} (no heading #{anchor} in {resolved.relative_to(REPO)})")
    assert not bad, f"{ids(page)}: broken links: {bad}"


def test_the_layout_lists_every_module() -> None:
    """docs/architecture.md's layout names every module of the packages, the bench scripts and
    the test helpers, and names no module that does not exist."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    folders = ["runtime", "runtime/serve", "runtime/scale", "train", "export", "tools", "bench"]
    files = {p for f in folders for p in (REPO / f).glob("*.py") if p.name != "__init__.py"}
    files |= set((REPO / "tests" / "helpers").glob("*.py")) - {REPO / "tests/helpers/__init__.py"}
    named = set(re.findall(r"`([\w/]*?\w+\.py)`", text))
    missing = sorted(
        str(p.relative_to(REPO)) for p in files if p.name not in {Path(n).name for n in named}
    )
    assert not missing, f"docs/architecture.md's layout leaves out {missing}"
    existing = {p.name for p in files} | {p.name for p in (REPO / "tests").glob("*.py")}
    stale = sorted(n for n in named if Path(n).name not in existing and not (REPO / n).exists())
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"


@pages
def test_repository_paths_exist(page: Path) -> None:
    bad = []
    for span in spans(prose(page)):
        for word in span.split():
            word = word.strip(",;:()")
            if (
                word.startswith((*SOURCE_DIRS, "web/"))
                and not word.startswith(("web/vendor", "web/node_modules"))
                and not re.search(r"[*\[{<]|\.\.\.", word)
                and not (REPO / word).exists()
            ):
                bad.append(word)
    assert not bad, f"{ids(page)}: no such file in the repository: {bad}"
