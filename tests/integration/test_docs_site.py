"""The documentation site: built with ``mkdocs build --strict`` and opened in headless Chromium.

The site is built once per module (``REVLENS_DOCS_SITE`` may name one ``make docs`` just built, as
``.ci/run`` does); a strict build fails on a broken link, a missing reference, a docstring
griffe cannot parse or an executed tutorial that raises. Then:

- every name in ``revlens.__all__`` and in each public module's ``__all__`` has an entry on that
  module's API page (a rendered docstring heading, or a link to the page that documents it);
- the home page, one API page and the rendered quickstart tutorial (with its plotly figures drawn)
  display without console errors, the network blocked;
- every ``DeprecationWarning`` revlens raises is listed on the deprecations page;
- the README stays a one-screen start: ≤ 120 lines, and every number in its results table appears
  on a results page.
"""

import ast
import functools
import http.server
import importlib
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from timeouts import scaled

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--no-first-run", "--disable-component-update", "--disable-sync",
]  # fmt: skip

# one worker builds the site once for every test of this module (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("docs-site")

sys.path.insert(0, str(ROOT / "tools"))
import mkdocs_hooks  # noqa: E402


def _need(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"docs test cannot run in CI: {module} is not installed (pyproject [dev])")
        pytest.skip(f"{module} is not installed (pip install 'revlens[docs]')")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    given = os.environ.get("REVLENS_DOCS_SITE")
    if given:
        return Path(given)
    _need("mkdocs")
    _need("mkdocs_jupyter")
    out = tmp_path_factory.mktemp("site")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=scaled(900),
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    )
    return out


def _api_html(site: Path, module: str) -> str:
    page = site / "reference" / "api" / module / "index.html"
    assert page.is_file(), f"no API page for {module}"
    return page.read_text(encoding="utf-8")


@pytest.mark.slow
def test_every_public_name_has_a_reference_entry(site: Path) -> None:
    import revlens

    modules = mkdocs_hooks.public_modules()
    # the reference covers revlens and every public subpackage / module with an __all__
    packages = {f"revlens.{p.name}" for p in (ROOT / "revlens").iterdir()
                if p.is_dir() and not p.name.startswith("_") and (p / "__init__.py").is_file()}  # fmt: skip
    with_all = {m for m in packages if hasattr(importlib.import_module(m), "__all__")}
    assert with_all <= set(modules), with_all - set(modules)
    assert modules[0] == "revlens" and len(revlens.__all__) > 20
    missing = []
    for module in modules:
        html = _api_html(site, module)
        for name in importlib.import_module(module).__all__:
            documented = re.search(rf'id="[\w.]*\b{re.escape(name)}"', html)
            linked = re.search(rf'href="[^"]*#[\w.]*\b{re.escape(name)}"', html)
            if not (documented or linked):
                missing.append(f"{module}.{name}")
    assert not missing, f"public names without a reference entry: {missing}"


@pytest.mark.slow
def test_cli_reference_is_the_parsers_help(site: Path) -> None:
    from revlens.cli import build_parser

    html = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"analyze", "ablate", "report", "weights", "lab", "replicate"} <= set(sub.choices)
    for name in sub.choices:
        assert f"revlens {name}</code>" in html, name
    assert "--history" in html


def test_deprecations_are_listed() -> None:
    """Each ``warnings.warn(..., DeprecationWarning)`` in revlens is a row of the deprecations page."""
    calls = 0
    for path in (ROOT / "revlens").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "warn"
                    and any(getattr(a, "id", None) == "DeprecationWarning" for a in node.args)):  # fmt: skip
                calls += 1
    rows = [line for line in (ROOT / "docs" / "reference" / "deprecations.md").read_text().splitlines()
            if line.startswith("| `")]  # fmt: skip
    assert calls >= 1
    assert len(rows) == calls, (
        f"{calls} DeprecationWarning call sites, {len(rows)} rows on the page"
    )


def _numbers(text: str) -> list[str]:
    return re.findall(r"\d+(?:\.\d+)?%?", text)


def test_readme_is_short_and_its_numbers_are_on_a_results_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 120
    assert "make demo" in readme and "make test" in readme
    table = [
        line
        for line in readme.split("## Headline results", 1)[1].splitlines()
        if line.startswith("|")
    ]
    assert len(table) >= 4
    results = "\n".join(
        p.read_text(encoding="utf-8") for p in (ROOT / "docs" / "results").glob("*.md")
    )
    results_rows = [line for line in results.splitlines() if line.startswith("|")]
    for row in table[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for cell in cells[1:]:
            for number in _numbers(cell):
                assert number in results, f"README number {number} ({row}) is on no results page"
        # the row as a whole: the same cells appear in one row of the results pages
        assert any(all(c in r for c in cells[1:] if c != "—") for r in results_rows), row
    # the figure is committed and drawn by the committed script
    assert (ROOT / "docs" / "assets" / "reversion.svg").is_file()
    assert "tools/readme_figure.py" in (ROOT / "docs" / "assets" / "reversion.svg").read_text()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def served(site: Path):
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.browser
@pytest.mark.slow
def test_site_displays_in_chromium(served: str, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} not found")
        pytest.skip(f"{CHROMIUM} not found (Debian: apt-get install -y chromium)")
    _need("playwright")
    from playwright.sync_api import sync_playwright

    errors, outside = [], []
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1300, "height": 900}, timeout=scaled(180) * 1000,
        )  # fmt: skip
        try:
            page = ctx.new_page()
            page.set_default_timeout(scaled(180) * 1000)

            def route(r):
                if r.request.url.startswith(served):
                    return r.continue_()
                outside.append(r.request.url)
                return r.abort()

            page.route("**/*", route)
            page.on(
                "console",
                lambda m: errors.append(f"{page.url}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: errors.append(f"{page.url}: {e}"))

            page.goto(served)
            assert page.locator("h1").first.text_content().replace("¶", "").strip() == "revlens"
            assert page.locator("img[src$='reversion.svg']").evaluate("i => i.naturalWidth") > 100
            page.locator("nav").get_by_text("Getting started").first.wait_for()

            page.goto(served + "reference/api/revlens.history/")
            entry = page.locator('[id="revlens.history.history.History"]')
            entry.wait_for()
            assert entry.is_visible()
            assert "from_trainer_output" in page.content()

            page.goto(served + "tutorials/01_quickstart/")
            page.wait_for_function(
                "() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 1"
            )
            drawn = page.evaluate(
                """() => Array.from(document.querySelectorAll('.js-plotly-plot')).filter(d => {
                    const s = d.querySelector('.main-svg');
                    return s && s.getBoundingClientRect().width > 100;}).length""")  # fmt: skip
            assert drawn >= 1
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "docs_tutorial_01.png"))
            assert "revlens.analyze" in page.content()  # the notebook's code is shown
        finally:
            ctx.close()
    assert not outside, f"the site asked for resources outside itself: {outside}"
    assert not errors, errors
