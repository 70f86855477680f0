"""The documentation site: it builds strict, its code runs, and it renders in a real browser.

* ``mkdocs build --strict`` succeeds with no warning (built once per session).
* Every ```python block of every ``docs/**/*.md`` page runs, in order, the blocks of a page
  sharing one namespace, in a fresh interpreter whose working directory is a temporary folder.
  A block preceded by the line ``<!-- no-exec -->`` is skipped (torchrun, GPU-only, downloads).
* ``docs/scripts/make_figures.py --quick`` runs and writes its figure.
* Headless Chromium loads the built site from a local server; the rendered DOM of the home and
  API pages is checked, every internal link and image on them resolves, and a screenshot is
  saved. Without Chromium the browser test is skipped, except in CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import os
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

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
NO_EXEC = "<!-- no-exec -->"
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
class CodeBlock:
    line: int  # 1-based line of the first code line in the page
    source: str
    executable: bool


def code_blocks(text: str) -> list[CodeBlock]:
    """The Python fenced blocks of a Markdown page, in order, with their first line number.

    A block is not executable when the last non-blank line before its opening fence is
    ``<!-- no-exec -->``. Fences may be indented (inside admonitions); the indent is removed.
    """
    lines = text.splitlines()
    blocks: list[CodeBlock] = []
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
        if lang in PYTHON_LANGS:
            previous = next(
                (lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), ""
            )
            blocks.append(CodeBlock(i + 2, "\n".join(body) + "\n", previous != NO_EXEC))
        i = j + 1
    return blocks


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
"""


@pytest.mark.parametrize("page", PAGES)
def test_docs_page_code_runs(page, tmp_path):
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
        [sys.executable, str(runner), str(spec)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"a python block of docs/{page} failed (line numbers are the page's):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )


def test_api_page_documents_every_public_name():
    import useful_data

    api = (DOCS / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: (useful_data[\w.]*)\s*$", api, re.MULTILINE))
    missing = [
        name
        for name in useful_data.__all__
        if name != "__version__" and f"useful_data.{name}" not in documented
    ]
    assert not missing, f"add '::: useful_data.NAME' to docs/api.md for: {missing}"


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


def test_site_renders_in_headless_chromium(chromium, site_url, tmp_path):
    home = _dump_dom(chromium, tmp_path, site_url, "home")
    api_url = urljoin(site_url, "api/")
    api = _dump_dom(chromium, tmp_path, api_url, "api")

    # The home page: rendered by the theme, with its content and the JS-added copy buttons.
    home_text = _text(home)
    assert "useful-data" in home_text and "UpSample Early For Uniform Learning" in home_text
    assert "When it helps" in home_text and "What it costs" in home_text
    assert "md-code__button" in home, "material's JavaScript did not run (no code-copy buttons)"

    # The API page: the signature of find_slow_learnable with its parameters, and the headings.
    signatures = [
        html.unescape(re.sub(r"<[^>]+>", "", block))
        for block in re.findall(r'<div class="doc-signature[^"]*">(.*?)</div>', api, re.S)
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
    _, api_links = _internal_targets(api, api_url)
    for anchor in (
        "useful_data.find_slow_learnable",
        "useful_data.Selection",
        "useful_data.ClassSummary",
        "useful_data.USEFULDataset",
        "useful_data.UpsampleSampler",
        "useful_data.collect.collect_outputs",
        "useful_data.synthetic.make_simplicity_bias_data",
        "useful_data.synthetic.ToyCNN",
    ):
        assert anchor in api_links.ids, f"no element with id {anchor!r} on the API page"
    # Docstring examples render as code (doctest prompts), not as Markdown block quotes.
    assert "<blockquote" not in api
    assert api.count('doc-section-title">Examples:') >= 5
    assert "&gt;&gt;&gt; </span>" in api
    heading = re.search(r"<h2[^>]*id=\"useful_data\.USEFULDataset\"[^>]*>(.*?)</h2>", api, re.S)
    assert heading is not None and "USEFULDataset" in _text(heading.group(1))

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
