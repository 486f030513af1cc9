"""`landscape report`: the page's numbers against h5py, its self-containment, and a real headless browser."""
import io
import os
import re
import shutil

import h5py
import numpy as np
import pytest

from tests.conftest import HANG_GUARD
from tests.test_cli import landscape


@pytest.fixture(scope="module")
def report_runs(tmp_path_factory, tiny_config):
    """vgg and vgg_bn, two rates, with probes and sharpness: everything the report draws for run files."""
    from landscape.training.runner import train

    folder = tmp_path_factory.mktemp("report")
    common = dict(probe_every=4, sharpness_every=4, sharpness_images=64, sharpness_iters=4, optimizer="sgd",
                  momentum=0.0, lrs=(1e-2, 3e-3))
    return [train(tiny_config(model=model, **common), folder / f"{model}.h5", progress=False)
            for model in ("vgg", "vgg_bn")]


def make_report(runs, tmp_path, capsys, *extra):
    out = tmp_path / "report.html"
    code, stdout, err = landscape("report", *runs, *extra, "--out", out, capsys=capsys)
    assert code in (0, None), err
    return out, out.read_text()


def test_the_page_is_self_contained_and_its_numbers_are_the_files(report_runs, tmp_path, capsys):
    out, page = make_report(report_runs, tmp_path, capsys)
    assert "plotly.js v" in page or "Plotly" in page[:3_000_000]
    assert not re.search(r"""src=["']https?:""", page)  # plotly.js is inline; nothing is loaded
    # per-rate curves of each file, envelope, range, probes at each of the 2 rates, sharpness
    assert page.count('class="plotly-graph-div"') == 2 + 2 + 2 + 1
    for path in report_runs:
        with h5py.File(path, "r") as f:
            best = 100 * f["epoch/test_acc"][...].max(axis=1)
        assert " / ".join(f"{b:.2f}" for b in best) in page
    with h5py.File(report_runs[0], "r") as f:  # the comparison table: median of max - min over rates, vgg
        loss = f["train/loss"][...].astype(np.float64)
    assert f"{np.median(loss.max(axis=0) - loss.min(axis=0)):.4g}" in page
    assert "vgg against vgg_bn" in page and "by the maximum" in page


def test_a_damaged_input_gets_a_note_and_the_rest_renders(report_runs, tmp_path, capsys):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not hdf5 at all")
    _, page = make_report([*report_runs, broken], tmp_path, capsys)
    assert page.count('class="note"') == 1 and "broken.h5: not an HDF5 file" in page
    assert page.count('class="plotly-graph-div"') == 7


def test_the_markdown_report_links_static_figures(report_runs, tmp_path, capsys):
    out = tmp_path / "report.md"
    code, _, err = landscape("report", *report_runs, "--markdown", "--out", out, capsys=capsys)
    text = out.read_text()
    pngs = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert code in (0, None) and pngs and all((tmp_path / p).is_file() for p in pngs)


def test_report_errors_are_one_line(tmp_path, capsys):
    for argv in (["report"], ["report", "--ablations", tmp_path / "nope"],
                 ["report", tmp_path / "x.h5", "--out", tmp_path]):
        code, _, err = landscape(*argv, capsys=capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1


def chromium() -> str | None:
    for candidate in (os.environ.get("LANDSCAPE_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                      shutil.which("google-chrome")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def test_the_page_works_in_a_real_browser_offline(report_runs, tmp_path, capsys):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    executable = chromium()
    if executable is None:
        pytest.skip("no Chromium found: apt-get install chromium (or set LANDSCAPE_CHROMIUM to its path)")
    from PIL import Image

    out, _ = make_report(report_runs, tmp_path, capsys)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(HANG_GUARD * 1000)  # a hang guard, not a deadline: a busy machine is slow
        fetched, errors = [], []
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://")
                   else (fetched.append(route.request.url), route.abort()))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(out.as_uri())
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length > 0")
        assert not errors and not fetched
        plots = page.locator(".js-plotly-plot")
        assert plots.count() == 7
        for i in range(plots.count()):
            box = plots.nth(i).locator(".main-svg").first.bounding_box()
            assert box and box["width"] > 100 and box["height"] > 100
        # clicking a legend entry hides its trace
        envelope = "document.querySelectorAll('.js-plotly-plot')[2]"
        visible = f"{envelope}.data.filter(t => t.visible !== 'legendonly').length"
        before = page.evaluate(visible)
        page.locator(".js-plotly-plot").nth(2).locator(".legendtoggle").first.click()
        page.wait_for_function(f"{visible} < {before}")  # plotly waits out a double-click first
        # clicking a column heading sorts the table
        table = page.locator("table.sortable").first
        column = "Array.from(document.querySelector('table.sortable').tBodies[0].rows).map(r => r.cells[0].innerText)"
        table.locator("th").first.click()
        ascending = page.evaluate(column)
        table.locator("th").first.click()
        assert page.evaluate(column) == sorted(ascending, reverse=True) and ascending == sorted(ascending)
        shot = page.screenshot(full_page=True)
        browser.close()
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float64)
    assert pixels.std() > 10  # not a blank page
