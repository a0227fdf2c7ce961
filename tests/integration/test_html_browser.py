"""The offline HTML report opened in a real headless chromium, with the network blocked.

Built from a real :class:`revlens.Report` (``revlens.analyze`` on a tiny GPT-2 history) whose
probe prompts hold a ``<script>`` and whose run names hold ``<b>``.
"""

import os
import shutil
from pathlib import Path

import pytest

import tiny
from revlens.analyze import analyze
from revlens.history import History
from timeouts import scaled

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
EVIL_PROMPT = "w1 w2 <script>alert(1)</script>"
EVIL_RUN = "<b>seed0</b>"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--no-first-run", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _need_browser():
    reason = None
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found (Debian: apt-get install -y chromium)"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            reason = "python playwright is not installed"
        else:
            return sync_playwright
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("hist")
    dirs = tiny.write_history(root, n_runs=2, steps=(1, 2, 3))
    runs = {EVIL_RUN: dirs["runs"]["seed0"], "seed1": dirs["runs"]["seed1"]}
    hist = History.from_dirs(base=dirs["base"], aligned=dirs["aligned"], runs=runs)
    return analyze(hist, [*tiny.PROMPTS, EVIL_PROMPT], methods=["mean_diff", "pca"],
                   n_bootstrap=20, n_null=50, progress=False)  # fmt: skip


def test_report_renders_offline_in_chromium(report, tmp_path):
    sync_playwright = _need_browser()
    html_path = report.to_html(tmp_path / "report.html")
    raw = html_path.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert raw.count("<script>alert(1)") == 0
    expected = 3 + (
        report.directions_table["method"].nunique() > 1
    )  # heatmap, lines, stability, agreement

    requests, errors, dialogs = [], [], []
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1300, "height": 900}, timeout=scaled(180) * 1000,
        )  # fmt: skip
        try:
            page = ctx.new_page()
            page.set_default_timeout(scaled(180) * 1000)  # ms; a loaded machine renders slowly

            def route(r):
                requests.append(r.request.url)
                return r.continue_() if r.request.url.startswith("file://") else r.abort()

            page.route("**/*", route)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(html_path.as_uri())
            page.wait_for_function(
                "n => document.querySelectorAll('.js-plotly-plot .main-svg').length >= n",
                arg=expected,
            )
            drawn = page.evaluate(
                """() => Array.from(document.querySelectorAll('.js-plotly-plot')).filter(d => {
                    const s = d.querySelector('.main-svg');
                    return s && s.getBoundingClientRect().width > 100;}).length"""
            )
            assert page.locator(".js-plotly-plot").count() == expected
            assert drawn == expected
            assert page.locator("#revlens-fig-0 .hm image").count() >= 1  # heatmap bitmap drawn

            # the <script> of a prompt stays text; a <b> run name is not markup
            assert page.locator("#prompts script").count() == 0
            assert EVIL_PROMPT in page.locator("#prompts").text_content()
            assert EVIL_RUN in page.locator("#checkpoints").text_content()

            # hover the middle cell of the first heatmap (method mean_diff, mean over runs)
            mid = page.evaluate(
                """() => {const gd = document.getElementById('revlens-fig-0');
                const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
                const x = gd.data[0].x[1], y = gd.data[0].y[1];
                const box = gd.getBoundingClientRect();
                return {x: String(x), y: Number(y), px: box.left + xa._offset + xa.c2p(1),
                        py: box.top + ya._offset + ya.c2p(1)};}"""
            )
            page.mouse.move(mid["px"], mid["py"])
            page.wait_for_selector("#revlens-fig-0 .hovertext", timeout=scaled(60) * 1000)
            hover = page.locator("#revlens-fig-0 .hovertext").first.text_content()
            d = report.drift
            cell = d[
                (d["method"] == "mean_diff")
                & (d["layer"] == mid["y"])
                & (d["step"] == int(mid["x"]))
            ]
            cell = cell[cell["kind"] == "run"]
            assert f"cos {cell['cos'].mean():.3f}" in hover, hover
            assert f"layer {mid['y']} · step {mid['x']}" in hover
            assert "null p99 iso" in hover

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)

            # the run selector: pick the run named "<b>seed0</b>" (shown literally, not as markup)
            page.mouse.move(5, 5)
            page.locator("#revlens-fig-0 .updatemenu-header-group").click()
            page.locator("#revlens-fig-0 .updatemenu-item-text", has_text=EVIL_RUN).click()
            shown = page.evaluate(
                """() => document.getElementById('revlens-fig-0').data
                .filter(t => t.type === 'heatmap' && t.visible === true).map(t => t.meta.option)"""
            )
            assert shown == [EVIL_RUN, EVIL_RUN]  # one heatmap per method

        finally:
            ctx.close()
    shutil.copy(html_path, ARTIFACTS / "report.html")
    assert dialogs == [], f"a script from the data ran: {dialogs}"
    assert errors == [], f"JavaScript console errors: {errors}"
    assert [u for u in requests if not u.startswith("file://")] == []
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
