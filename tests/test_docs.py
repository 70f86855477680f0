"""The documentation site: it builds strict, its code runs, and it renders in a real browser.

* ``mkdocs build --strict`` succeeds with no warning (built once per session).
* Every ```python block of every ``docs/**/*.md`` page runs, in order, the blocks of a page
  sharing one namespace, in a fresh interpreter whose working directory is a temporary folder.
  A block preceded by the line ``<!-- no-exec -->`` is skipped (torchrun, GPU-only, downloads);
  one preceded by ``<!-- signatures -->`` is not run but checked against the code: every call
  in it names real parameters, and every literal keyword value is that parameter's default.
* A page holding the line ``<!-- torchrun: 2 -->`` runs its blocks a second time, the same way,
  under ``torchrun --standalone --nproc_per_node 2`` on the CPU (gloo): the guides that say
  their code runs unchanged on several processes are held to it.
* The README's usage block is one of the blocks getting-started.md runs, verbatim.
* Every page is in ``mkdocs.yml``'s nav, and every guide is linked from ``guides/index.md``.
* Every ``useful-data ...`` line of a bash block parses with the command's own parser.
* The API reference has a page ``docs/api/<module>.md`` per public module, documents every
  name of every public ``__all__``, and ``docs/api.md`` imports every top-level name.
* A recorded output, a ```text or bare ``` block, says which command printed it: the ```bash
  block right before it (blank lines between at most), or a ``<!-- output: COMMAND -->`` line
  right before it. Its first line (unless a table row) and every line starting with ``#`` must
  be a line the command's script can print (a string or f-string in the script or in a module
  it imports from its folder). A block that is no output (pseudo-code) is preceded by
  ``<!-- pseudo-code -->``.
* ``docs/scripts/make_figures.py --quick`` runs and writes its figure.
* The reference pages render signatures, anchors and doctest examples (checked on the built
  HTML). Headless Chromium loads the built site from a local server; the rendered DOM of the
  home page and a reference page is checked, every internal link and image on them resolves,
  and a screenshot is saved. Without Chromium the browser test is skipped, except in CI
  (``CI`` set), where it fails.
"""

from __future__ import annotations

import ast
import functools
import html
import http.server
import importlib
import inspect
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
NO_EXEC = "<!-- no-exec -->"
SIGNATURES = "<!-- signatures -->"
PSEUDO_CODE = "<!-- pseudo-code -->"
TORCHRUN = "<!-- torchrun: 2 -->"
OUTPUT_TAG = re.compile(r"^<!-- output: (?P<command>.+?)(?: @ (?P<commit>[0-9a-f]{7,40}))? -->$")
PROMPT = "$ "  # a transcript's command lines, in a ```text or ```console block
PYTHON_LANGS = {"python", "py"}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# The docs' examples are tiny: one intra-op thread is much faster than several on a shared CPU
# (an OpenMP pool spin-waits when another process holds the cores).
_SMALL_CPU_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")


# --- code blocks of the docs pages ------------------------------------------------------------
@dataclass(frozen=True)
class Fenced:
    line: int  # 1-based line of the first code line in the page
    lang: str
    source: str
    marker: str  # the last non-blank line before the opening fence ("" if none)
    after_fence: str | None  # lang of the fenced block right before (blank lines between)
    previous_command: str  # the source of that block


@dataclass(frozen=True)
class CodeBlock:
    line: int  # 1-based line of the first code line in the page
    source: str
    executable: bool


def fenced_blocks(text: str) -> list[Fenced]:
    """Every fenced block of a Markdown page, in order, with what precedes it.

    Fences may be indented (inside admonitions); the indent is removed.
    """
    lines = text.splitlines()
    blocks: list[Fenced] = []
    last_close = -2  # line index of the previous block's closing fence
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        info = match["info"].strip()
        lang = info.split()[0].lstrip(".").lower() if info else ""
        lang = lang.strip("{}")
        body: list[str] = []
        j = i + 1
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        while j < len(lines) and not closing.match(lines[j]):
            line = lines[j]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            j += 1
        previous = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        adjacent = blocks and all(not lines[k].strip() for k in range(last_close + 1, i))
        blocks.append(
            Fenced(
                line=i + 2,
                lang=lang,
                source="\n".join(body) + "\n",
                marker=previous,
                after_fence=blocks[-1].lang if adjacent else None,
                previous_command=blocks[-1].source if adjacent else "",
            )
        )
        last_close = j
        i = j + 1
    return blocks


def code_blocks(text: str) -> list[CodeBlock]:
    """The Python fenced blocks of a Markdown page, in order, with their first line number.

    A block is not executable when the last non-blank line before its opening fence is
    ``<!-- no-exec -->`` or ``<!-- signatures -->``.
    """
    return [
        CodeBlock(b.line, b.source, b.marker not in (NO_EXEC, SIGNATURES))
        for b in fenced_blocks(text)
        if b.lang in PYTHON_LANGS
    ]


def test_code_blocks_parser_follows_the_no_exec_convention():
    page = "\n".join(
        [
            "# Title",
            "```python",
            "a = 1",
            "```",
            "<!-- no-exec -->",
            "",
            "```python",
            "raise SystemExit('must not run')",
            "```",
            "```bash",
            "echo not python",
            "```",
            "!!! note",
            "    ```py",
            "    b = a + 1",
            "    ```",
            "````python",
            "c = '```'",
            "````",
        ]
    )
    blocks = code_blocks(page)
    assert [(b.line, b.source, b.executable) for b in blocks] == [
        (3, "a = 1\n", True),
        (8, "raise SystemExit('must not run')\n", False),
        (15, "b = a + 1\n", True),
        (18, "c = '```'\n", True),
    ]


_RUNNER = """
import json, sys
page, blocks = json.load(open(sys.argv[1], encoding="utf-8"))
namespace = {"__name__": "__main__"}
for block in blocks:
    # pad with blank lines so that tracebacks show the line numbers of the Markdown page
    code = compile("\\n" * (block["line"] - 1) + block["source"], page, "exec")
    exec(code, namespace)
# as a torchrun script should end: a process group left up can abort the interpreter's exit
# ("terminate called without an active exception") after the page has run
import torch.distributed as dist
if dist.is_available() and dist.is_initialized():
    dist.destroy_process_group()
"""


def _run_page(page: str, tmp_path: Path, launcher: list[str]) -> None:
    """Run the executable python blocks of ``docs/<page>`` in one namespace, under ``launcher``."""
    path = DOCS / page
    blocks = [b for b in code_blocks(path.read_text(encoding="utf-8")) if b.executable]
    if not blocks:
        pytest.skip(f"{page} has no executable python blocks")
    spec = tmp_path / "blocks.json"
    payload = [f"docs/{page}", [{"line": b.line, "source": b.source} for b in blocks]]
    spec.write_text(json.dumps(payload), encoding="utf-8")
    runner = tmp_path / "run_blocks.py"
    runner.write_text(_RUNNER, encoding="utf-8")
    work = tmp_path / "cwd"
    work.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.update(_SMALL_CPU_ENV)
    proc = subprocess.run(
        [*launcher, str(runner), str(spec)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (
        f"a python block of docs/{page} failed under {' '.join(launcher)} (line numbers are "
        f"the page's):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )


@pytest.mark.parametrize("page", PAGES)
def test_docs_page_code_runs(page, tmp_path):
    _run_page(page, tmp_path, [sys.executable])


TORCHRUN_PAGES = [p for p in PAGES if TORCHRUN in (DOCS / p).read_text(encoding="utf-8")]


@pytest.mark.parametrize("page", TORCHRUN_PAGES)
def test_docs_page_code_runs_on_two_processes(page, tmp_path):
    """The page's blocks, as written, under torchrun with 2 CPU processes (gloo)."""
    _run_page(
        page,
        tmp_path,
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    )


# The guides whose code says it runs unchanged on several processes.
MULTI_PROCESS_GUIDES = {
    "guides/accelerate.md",
    "guides/distributed.md",
    "guides/huggingface.md",
    "guides/lightning.md",
    "guides/streaming.md",
}


def test_multi_process_guides_are_run_on_two_processes():
    assert set(TORCHRUN_PAGES) >= MULTI_PROCESS_GUIDES, (
        f"these guides need a {TORCHRUN} line (and code that runs under torchrun): "
        f"{sorted(MULTI_PROCESS_GUIDES - set(TORCHRUN_PAGES))}"
    )


# --- the README, the nav and the guides index --------------------------------------------------
def test_readme_usage_block_runs_in_getting_started():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    usage = readme.split("\n## Usage", 1)[1]
    first = next(b for b in fenced_blocks(usage) if b.lang in PYTHON_LANGS)
    page = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    executed = [b.source for b in code_blocks(page) if b.executable]
    assert first.source in executed, (
        "the README's usage block must be, verbatim, a block that docs/getting-started.md runs "
        "(edit both together):\n" + first.source
    )


class _IgnoreTags(yaml.SafeLoader):
    """mkdocs.yml may hold ``!!python/name:`` tags (pymdownx options); the nav needs none."""


_IgnoreTags.add_multi_constructor("", lambda loader, suffix, node: None)
_IgnoreTags.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def nav_pages() -> list[str]:
    """The pages listed in ``mkdocs.yml``'s nav, in order."""
    config = yaml.load((REPO / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_IgnoreTags)

    def walk(item: object) -> Iterator[str]:
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for value in item.values():
                yield from walk(value)
        elif isinstance(item, list):
            for value in item:
                yield from walk(value)

    return [page for page in walk(config["nav"]) if page.endswith(".md")]


def test_every_page_is_in_the_nav():
    listed = nav_pages()
    missing = [page for page in PAGES if page not in listed]
    assert not missing, f"add these pages to nav in mkdocs.yml: {missing}"
    absent = [page for page in listed if page not in PAGES]
    assert not absent, f"mkdocs.yml's nav lists pages that do not exist: {absent}"


def test_every_guide_is_listed_in_the_guides_index():
    index = (DOCS / "guides" / "index.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([\w./-]+\.md)(?:#[\w-]*)?\)", index))
    guides = sorted(p.name for p in (DOCS / "guides").glob("*.md") if p.name != "index.md")
    missing = [guide for guide in guides if guide not in linked]
    assert not missing, f"link these guides from docs/guides/index.md: {missing}"


# --- the API reference --------------------------------------------------------------------------
API_PAGES = sorted((DOCS / "api").glob("*.md"))
_DIRECTIVE = re.compile(
    r"^::: (?P<target>[\w.]+)[ \t]*\n(?P<options>(?:[ \t]+.*\n|[ \t]*\n)*)", re.M
)


def public_modules() -> list[str]:
    import useful_data

    return sorted(
        info.name
        for info in pkgutil.iter_modules(useful_data.__path__)
        if not info.name.startswith("_") and not _moved_module(info.name)
    )


def _moved_module(name: str) -> bool:
    """A module left at its old path to warn where its names went (no names of its own)."""
    source = REPO / "useful_data" / f"{name}.py"
    return source.is_file() and "__all__: list[str] = []" in source.read_text(encoding="utf-8")


def _resolve(dotted: str) -> object:
    """The object a ``::: useful_data.x.y`` directive names."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(dotted)


def documented_objects() -> tuple[list[int], dict[str, set[str] | None]]:
    """``id``s of the objects the reference documents, and its module directives.

    A module directive maps to the member names its ``members:`` option lists, or to ``None``
    (every public member).
    """
    objects: list[int] = []
    modules: dict[str, set[str] | None] = {}
    for page in [DOCS / "api.md", *API_PAGES]:
        for match in _DIRECTIVE.finditer(page.read_text(encoding="utf-8") + "\n"):
            obj = _resolve(match["target"])
            objects.append(id(obj))
            if inspect.ismodule(obj):
                members = re.search(r"members:\s*\n((?:\s+- \w+\s*\n)+)", match["options"])
                listed = set(re.findall(r"- (\w+)", members.group(1))) if members else None
                modules[obj.__name__] = listed
    return objects, modules


def test_api_overview_imports_every_top_level_name():
    import useful_data

    overview = (DOCS / "api.md").read_text(encoding="utf-8")
    block = next(b for b in code_blocks(overview))
    imported = {
        alias.name
        for node in ast.walk(ast.parse(block.source))
        if isinstance(node, ast.ImportFrom) and node.module == "useful_data"
        for alias in node.names
    }
    expected = set(useful_data.__all__) - {"__version__"}
    assert imported == expected, (
        f"docs/api.md's first block should import exactly useful_data.__all__: "
        f"missing {sorted(expected - imported)}, extra {sorted(imported - expected)}"
    )


@pytest.mark.parametrize("module", public_modules())
def test_api_reference_documents_every_public_name(module):
    page = DOCS / "api" / f"{module}.md"
    assert page.is_file(), f"add a reference page docs/api/{module}.md (and list it in nav)"
    objects, modules = documented_objects()
    mod = importlib.import_module(f"useful_data.{module}")
    assert hasattr(mod, "__all__"), f"useful_data.{module} should define __all__"
    missing = []
    for name in mod.__all__:
        if id(getattr(mod, name)) in objects:
            continue
        listed = modules.get(mod.__name__, set())
        if listed is None or name in listed:
            continue
        missing.append(name)
    assert not missing, f"docs/api/{module}.md should document useful_data.{module}.{missing}"


def _signature_of(target: ast.expr, namespaces: list[object]) -> inspect.Signature:
    dotted = ast.unparse(target)
    head, *rest = dotted.split(".")
    for namespace in namespaces:
        if hasattr(namespace, head):
            obj = getattr(namespace, head)
            for attribute in rest:
                obj = inspect.getattr_static(obj, attribute)
                if isinstance(obj, (classmethod, staticmethod)):
                    obj = obj.__func__
            return inspect.signature(obj)
    raise AssertionError(f"{dotted} is neither in useful_data nor in {namespaces[1:]}")


def _signature_blocks() -> list[tuple[str, Fenced]]:
    found = []
    for page in PAGES:
        for block in fenced_blocks((DOCS / page).read_text(encoding="utf-8")):
            if block.lang in PYTHON_LANGS and block.marker == SIGNATURES:
                found.append((page, block))
    return found


def test_signature_blocks_exist_on_every_api_page():
    pages = {page for page, _ in _signature_blocks()}
    missing = [f"api/{p.name}" for p in API_PAGES if f"api/{p.name}" not in pages]
    assert not missing, f"open these reference pages with a <!-- signatures --> block: {missing}"


@pytest.mark.parametrize(
    "page,block",
    [pytest.param(page, block, id=f"{page}:{block.line}") for page, block in _signature_blocks()],
)
def test_signature_blocks_match_the_code(page, block):
    import useful_data

    module = Path(page).stem if page.startswith("api/") else ""
    namespaces: list[object] = [useful_data]
    if module and module != "api":
        namespaces.append(importlib.import_module(f"useful_data.{module}"))
    calls = [
        node.value
        for node in ast.parse(block.source).body
        if isinstance(node, (ast.Expr, ast.Assign)) and isinstance(node.value, ast.Call)
    ]
    assert calls, f"docs/{page}:{block.line}: a signatures block holds calls only"
    for call in calls:
        where = f"docs/{page}, {ast.unparse(call.func)} (block at line {block.line})"
        params = [
            p
            for p in _signature_of(call.func, namespaces).parameters.values()
            if p.name not in ("self", "cls")
        ]
        by_name = {p.name: p for p in params}
        for position, arg in enumerate(call.args):
            if isinstance(arg, ast.Name):
                assert position < len(params) and params[position].name == arg.id, (
                    f"{where}: positional argument {position} is "
                    f"{params[position].name if position < len(params) else 'absent'}, "
                    f"not {arg.id}"
                )
        for keyword in call.keywords:
            if keyword.arg is None:  # **kwargs
                continue
            assert keyword.arg in by_name, f"{where}: no parameter named {keyword.arg}"
            default = by_name[keyword.arg].default
            if isinstance(keyword.value, ast.Constant) and keyword.value.value is Ellipsis:
                continue  # `name=...`: a required or unspecified value
            try:
                shown = ast.literal_eval(keyword.value)
            except ValueError:
                text = ast.unparse(keyword.value)
                shown = _resolve(text) if "." in text else text
            assert default is not inspect.Parameter.empty, (
                f"{where}: {keyword.arg} has no default; pass it positionally or as "
                f"{keyword.arg}=..."
            )
            assert shown == default and type(shown) is type(default), (
                f"{where}: {keyword.arg}={ast.unparse(keyword.value)}, but its default is "
                f"{default!r}"
            )


def _cli_commands() -> list[tuple[str, str]]:
    """Every ``useful-data ...`` command line of a bash block (continuations joined)."""
    found = []
    for page in [*PAGES, "../README.md"]:
        for block in fenced_blocks((DOCS / page).read_text(encoding="utf-8")):
            if block.lang not in ("bash", "console", "sh", "shell", "text"):
                continue
            for line in block.source.replace("\\\n", " ").splitlines():
                if block.lang == "text" and not line.startswith(PROMPT):
                    continue  # in a recorded output, only a transcript's commands
                command = line.removeprefix(PROMPT).split(" #", 1)[0].strip()
                if command.startswith("useful-data "):
                    found.append((page, command))
    return found


@pytest.mark.parametrize(
    "page,command", [pytest.param(*found, id=found[1][:40]) for found in _cli_commands()]
)
def test_cli_commands_in_the_docs_parse(page, command, capsys):
    import shlex

    from useful_data.cli import _build_parser

    try:
        _build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as exit_info:  # --version and --help exit 0
        assert exit_info.code in (0, None), (
            f"docs/{page}: {command!r} is refused by useful-data's own parser:\n"
            f"{capsys.readouterr().err}"
        )


# --- recorded outputs ---------------------------------------------------------------------------
def _source(path: Path, commit: str | None) -> str | None:
    """A file of the repository, as it is or as it was at ``commit`` (``None``: absent)."""
    if commit is None:
        return path.read_text(encoding="utf-8") if path.is_file() else None
    relative = path.relative_to(REPO).as_posix()
    proc = subprocess.run(
        ["git", "show", f"{commit}:{relative}"], cwd=REPO, capture_output=True, text=True
    )
    return proc.stdout if proc.returncode == 0 else None


def _strings_of(path: Path, seen: set[Path], commit: str | None = None) -> list[str]:
    """Regexes of every line a script can print, from its strings and f-strings.

    Modules it imports from its own folder (``benchmarks/_common.py``) are read too, all as of
    ``commit`` when one is given. Docstrings are left out; an f-string's replacement fields
    match anything.
    """
    source = None if path in seen else _source(path, commit)
    if source is None:
        return []
    seen.add(path)
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    patterns: list[str] = []

    def pieces(node: ast.expr) -> list[str | None] | None:  # None stands for a field
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.JoinedStr):
            out: list[str | None] = []
            for value in node.values:
                out.extend(pieces(value) or [None])
            return out
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = pieces(node.left), pieces(node.right)
            if left is not None and right is not None:
                return left + right
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            local = path.parent / (node.module.replace(".", "/") + ".py")
            patterns += _strings_of(local, seen, commit)
        if isinstance(node, ast.Import):
            for alias in node.names:
                patterns += _strings_of(path.parent / (alias.name + ".py"), seen, commit)
        if id(node) in docstrings or not isinstance(node, (ast.Constant, ast.JoinedStr, ast.BinOp)):
            continue
        parts = pieces(node)
        if parts is None:
            continue
        line: list[str] = []
        for part in [*parts, "\n"]:
            if part is None:
                line.append(".*")
                continue
            for k, chunk in enumerate(part.split("\n")):
                if k:
                    patterns.append("".join(line))
                    line = []
                line.append(re.sub(r"\\\{[^{}]*\\\}", ".*", re.escape(chunk)))
    literal = [re.sub(r"\\(.)", r"\1", p.replace(".*", "")).strip() for p in patterns]
    return [p for p, text in zip(patterns, literal, strict=True) if len(text) >= 3]


def _scripts_of(command: str) -> list[Path]:
    scripts = []
    for token in command.replace("\\\n", " ").split():
        if token.endswith(".py") and (REPO / token).is_file():
            scripts.append(REPO / token)
    if re.search(r"(^|\s)useful-data\s", command):
        scripts += [REPO / "useful_data" / "cli.py", REPO / "useful_data" / "selection.py"]
    return scripts


def _recorded_outputs() -> list[tuple[str, Fenced, str, str | None]]:
    """Every recorded output block: (page, block, its command, the commit it was run at)."""
    found = []
    for page in [*PAGES, "../README.md"]:
        for block in fenced_blocks((DOCS / page).read_text(encoding="utf-8")):
            if block.lang not in ("", "text", "console") or block.marker == PSEUDO_CODE:
                continue
            tag = OUTPUT_TAG.match(block.marker)
            command, commit = "", None
            if tag is not None:
                command, commit = tag["command"], tag["commit"]
            elif block.after_fence in ("bash", "console", "sh", "shell"):
                command = block.previous_command
            found.append((page, block, command, commit))
    return found


def _transcript(block: Fenced, command: str) -> list[tuple[str, list[str]]]:
    """(command, output lines) pairs: one per ``$ `` line of a transcript, else just one."""
    lines = [line for line in block.source.splitlines() if line.strip()]
    if not any(line.startswith(PROMPT) for line in lines):
        return [(command, lines)]
    pairs: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith(PROMPT):
            pairs.append((line[len(PROMPT) :], []))
        elif pairs:
            pairs[-1][1].append(line)
    return pairs


@pytest.mark.parametrize(
    "page,block,command,commit",
    [pytest.param(*found, id=f"{found[0]}:{found[1].line}") for found in _recorded_outputs()],
)
def test_recorded_output_is_the_command_output(page, block, command, commit):
    where = f"docs/{page}, the text block at line {block.line}"
    pairs = _transcript(block, command)
    assert all(command for command, _ in pairs), (
        f"{where}: a recorded output needs its command: a ```bash block right before it, "
        f"'<!-- output: COMMAND -->' (or '<!-- output: COMMAND @ COMMIT -->' for an output of "
        f"an earlier version) on the line before, or '$ COMMAND' lines in it; pseudo-code: "
        f"'{PSEUDO_CODE}'"
    )
    if commit is not None and _source(REPO / "README.md", commit) is None:
        pytest.skip(f"{where}: recorded at {commit}, which this checkout's git history lacks")
    for command, output in pairs:
        scripts = _scripts_of(command)
        assert scripts, f"{where}: no script of this repository in its command {command!r}"
        patterns = [re.compile(p) for script in scripts for p in _strings_of(script, set(), commit)]
        shown = [line for line in output if line.strip() not in ("...", "…")]
        headers = [line for line in shown if line.startswith("#")]
        if shown and not shown[0].startswith(("|", "#")):
            headers.insert(0, shown[0])
        unknown = [h for h in headers if not any(p.fullmatch(h) for p in patterns)]
        version = f" as of {commit}" if commit else ""
        assert not unknown, (
            f"{where}: these lines are not lines {', '.join(x.name for x in scripts)}{version} "
            f"prints, so this is not the output of {command.strip()!r}: {unknown}"
        )


def test_figure_script_runs_quick(tmp_path):
    out = tmp_path / "alignment.png"
    proc = subprocess.run(
        [sys.executable, str(DOCS / "scripts" / "make_figures.py"), "--quick", "--out", str(out)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), **_SMALL_CPU_ENV},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "precision=" in proc.stdout and "recall=" in proc.stdout
    # the committed figure exists and is what the page shows
    assert (DOCS / "assets" / "alignment.png").is_file()
    assert "assets/alignment.png" in (DOCS / "how-it-works.md").read_text(encoding="utf-8")


# --- the built site -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> tuple[Path, str]:
    site = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{output[-6000:]}"
    return site, output


def test_mkdocs_build_strict_has_no_warnings(built_site):
    site, output = built_site
    assert "WARNING" not in output, output[-6000:]
    for page in PAGES:  # every page is built (mkdocs.yml's nav lists it, or strict fails)
        stem = page.removesuffix(".md")
        built = f"{stem}.html" if stem.rsplit("/", 1)[-1] == "index" else f"{stem}/index.html"
        assert (site / built).is_file(), f"docs/{page} was not built to {built}"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def site_url(built_site) -> Iterator[str]:
    site, _ = built_site
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _chromium() -> str | None:
    for name in ("chromium", "/usr/bin/chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    found = _chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(
                "CI is set but chromium is not installed (.ci/run installs it with apt-get)"
            )
        pytest.skip("chromium is not installed (apt-get install chromium); skipped outside CI")
    return found


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile.mkdir(parents=True, exist_ok=False)  # a fresh profile for every run
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _dump_dom(binary: str, tmp_path: Path, url: str, name: str) -> str:
    proc = _run_chromium(binary, tmp_path / f"profile-{name}", "--dump-dom", url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "<html" in proc.stdout.lower(), f"no DOM for {url}: {proc.stderr[-3000:]}"
    return proc.stdout


class _Links(HTMLParser):
    """Collects ``href``/``src`` targets and element ids of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "id":
                self.ids.add(value)
            if (tag, name) in {("a", "href"), ("link", "href"), ("img", "src"), ("script", "src")}:
                self.targets.append(value)


def _text(dom: str) -> str:
    """Visible-ish text of a DOM dump: tags removed, entities decoded, whitespace collapsed."""
    no_scripts = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", no_scripts)).split())


def _internal_targets(dom: str, page_url: str) -> tuple[set[str], _Links]:
    parser = _Links()
    parser.feed(dom)
    internal = set()
    for target in parser.targets:
        if urlsplit(target).scheme or target.startswith("//"):
            continue  # external: not part of the offline site
        absolute, _ = urldefrag(urljoin(page_url, target))
        internal.add(absolute)
    return internal, parser


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


# Where the reference renders the most used names (page, element id).
REFERENCE_ANCHORS = [
    ("api/slow_learnable", "useful_data.find_slow_learnable"),
    ("api/selection", "useful_data.Selection"),
    ("api/selection", "useful_data.ClassSummary"),
    ("api/dataset", "useful_data.USEFULDataset"),
    ("api/sampler", "useful_data.UpsampleSampler"),
    ("api/sam", "useful_data.SAM"),
    ("api/collect", "useful_data.collect.collect_outputs"),
    ("api/synthetic", "useful_data.synthetic.make_simplicity_bias_data"),
    ("api/synthetic", "useful_data.synthetic.ToyCNN"),
]


def test_reference_pages_render_signatures_anchors_and_examples(built_site):
    site, _ = built_site
    built = {
        page: (site / page / "index.html").read_text(encoding="utf-8")
        for page in {page for page, _ in REFERENCE_ANCHORS}
    }
    # find_slow_learnable's signature, with its parameters.
    signatures = [
        html.unescape(re.sub(r"<[^>]+>", "", block))
        for block in re.findall(
            r'<div class="doc-signature[^"]*">(.*?)</div>', built["api/slow_learnable"], re.S
        )
    ]
    signature = next((s for s in signatures if s.lstrip().startswith("find_slow_learnable(")), "")
    assert signature, f"no signature of find_slow_learnable among {len(signatures)} signatures"
    for parameter in (
        "model: Module | None = None",
        "dataset: Dataset[Any] | None = None",
        "logits:",
        "targets:",
        "eval_dataset:",
        "upsample_factor: int = 2",
        ") -> Selection",
    ):
        assert parameter in signature, f"{parameter!r} missing from the signature:\n{signature}"
    for page, anchor in REFERENCE_ANCHORS:
        parser = _Links()
        parser.feed(built[page])
        assert anchor in parser.ids, f"no element with id {anchor!r} on {page}"
    heading = re.search(
        r"<h2[^>]*id=\"useful_data\.USEFULDataset\"[^>]*>(.*?)</h2>", built["api/dataset"], re.S
    )
    assert heading is not None and "USEFULDataset" in _text(heading.group(1))
    # Docstring examples render as code (doctest prompts), not as Markdown block quotes.
    pages = [p.read_text(encoding="utf-8") for p in (site / "api").glob("*/index.html")]
    assert not any("<blockquote" in page for page in pages)
    assert sum(page.count('doc-section-title">Examples:') for page in pages) >= 5
    assert "&gt;&gt;&gt; </span>" in built["api/slow_learnable"]


def test_site_renders_in_headless_chromium(chromium, site_url, tmp_path):
    home = _dump_dom(chromium, tmp_path, site_url, "home")
    api_url = urljoin(site_url, "api/slow_learnable/")
    api = _dump_dom(chromium, tmp_path, api_url, "api")

    # The home page: rendered by the theme, with its content and the JS-added copy buttons.
    home_text = _text(home)
    assert "useful-data" in home_text and "UpSample Early For Uniform Learning" in home_text
    assert "When it helps" in home_text and "What it costs" in home_text
    assert "md-code__button" in home, "material's JavaScript did not run (no code-copy buttons)"
    # A reference page, as the browser renders it: the signature and its anchor.
    assert "find_slow_learnable(" in _text(api)
    _, api_links = _internal_targets(api, api_url)
    assert "useful_data.find_slow_learnable" in api_links.ids

    # Every internal link and image on both pages resolves on the local server.
    checked = 0
    for dom, url in ((home, site_url), (api, api_url)):
        internal, _ = _internal_targets(dom, url)
        broken = sorted(t for t in internal if _status(t) != 200)
        assert not broken, f"broken internal links on {url}: {broken}"
        checked += len(internal)
    assert checked > 10

    # A screenshot of the home page, kept in the test's tmp dir, and it is not blank.
    shot = tmp_path / "home.png"
    proc = _run_chromium(
        chromium,
        tmp_path / "profile-shot",
        f"--screenshot={shot}",
        "--window-size=1280,900",
        site_url,
    )
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-3000:]
    image = pytest.importorskip("matplotlib.image").imread(shot)
    assert image.shape[:2] == (900, 1280)
    assert len({tuple(px) for px in image[::20, ::20].reshape(-1, image.shape[-1]).tolist()}) > 8
