"""The documentation runs: every code block of the README and of docs/ executed top to bottom per page (or marked
with the reason it cannot run), the generated CLI reference in step with --help, and links that resolve."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HANG_GUARD
from tests.docs_examples import blocks_of, run_page

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_code_block_of_the_page_runs(page, tmp_path, cifar_root):
    (tmp_path / "data").symlink_to(cifar_root, target_is_directory=True)  # data/ as the pages say
    problems = run_page(page, tmp_path, REPO, HANG_GUARD)
    assert not problems, "\n".join(problems)


def test_a_block_that_raises_fails_its_page(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# a page\n\n```python\nprint('fine')\n```\n\n```python\nraise ValueError('on purpose')\n```\n\n"
                    "<!-- not run: shown, not run -->\n```bash\nexit 3\n```\n\n```bash\nfalse\n```\n")
    problems = run_page(page, tmp_path, REPO, 60)
    assert len(problems) == 1 and "page.md:7" in problems[0] and "on purpose" in problems[0]
    page.write_text("<!-- not run:  -->\n```bash\ntrue\n```\n")
    assert "needs a reason" in run_page(page, tmp_path, REPO, 60)[0]


def test_every_block_not_run_says_why():
    for page in PAGES:
        for block in blocks_of(page.read_text()):
            assert block.not_run is None or len(block.not_run) > 10, f"{page.name}:{block.line}"


def test_the_readme_is_short_and_its_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    for target in re.findall(r"\]\(([^)#]+)[^)]*\)", readme):
        if not target.startswith("http"):
            assert (REPO / target).exists(), target


def test_the_top_level_help_lists_every_command_with_an_example():
    from landscape.cli.main import cli

    out = subprocess.run([sys.executable, "-m", "landscape", "--help"], capture_output=True, text=True).stdout
    examples = out.split("Options:")[0]
    for name in cli.commands:
        assert re.search(rf"landscape {name}\b", examples), name


def test_the_cli_reference_lists_what_help_lists():
    """mkdocs-click renders the options from the click command itself; check one command's table against --help."""
    pytest.importorskip("mkdocs_click")
    from markdown import markdown

    page = (REPO / "docs" / "reference" / "cli.md").read_text()
    html = markdown(page, extensions=["mkdocs-click", "tables", "attr_list"])
    out = subprocess.run([sys.executable, "-m", "landscape", "measure", "--help"], capture_output=True,
                         text=True).stdout
    options = set(re.findall(r"^\s+(--[a-z][a-z-]*)", out, re.MULTILINE))
    section = html.split("landscape measure", 1)[1].split("<h2", 1)[0]
    shown = set(re.findall(r"(--[a-z][a-z-]*)", section))
    assert options and options <= shown


def test_the_docs_build_strictly(tmp_path):
    if shutil.which("mkdocs") is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]'")
    done = subprocess.run(["mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO,
                          capture_output=True, text=True, env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_full_build_draws_the_figures_the_pages_blocks_make(tmp_path):
    """tools/docs_figures.py: with LANDSCAPE_DOCS_FIGURES=1 a page's blocks run and its marked images appear in the
    site; without it the marker names the figure; a page whose blocks do not draw it fails the build."""
    if shutil.which("mkdocs") is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]'")
    import os

    (tmp_path / "docs").mkdir()
    (tmp_path / "mkdocs.yml").write_text(f"site_name: t\nhooks:\n  - {REPO / 'tools' / 'docs_figures.py'}\n")
    page = ("# A page\n\n```python\nimport matplotlib.pyplot as plt\nplt.plot([0, 1])\nplt.savefig('{name}')\n```"
            "\n\n<!-- figure: line.png | A straight line -->\n")
    (tmp_path / "docs" / "index.md").write_text(page.format(name="line.png"))

    def build(full: bool):
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "LANDSCAPE_DOCS_DATA": str(tmp_path)}
        env.pop("LANDSCAPE_DOCS_FIGURES", None)
        if full:
            env["LANDSCAPE_DOCS_FIGURES"] = "1"
        return subprocess.run(["mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=tmp_path,
                              capture_output=True, text=True, env=env, timeout=HANG_GUARD)

    done = build(full=True)
    assert done.returncode == 0, done.stderr[-2000:]
    html = (tmp_path / "site" / "index.html").read_text()
    assert 'src="figures/index/line.png"' in html and "A straight line" in html
    assert (tmp_path / "site" / "figures" / "index" / "line.png").read_bytes()[:4] == b"\x89PNG"
    done = build(full=False)
    assert done.returncode == 0, done.stderr[-2000:]
    html = (tmp_path / "site" / "index.html").read_text()
    assert "figures/index/line.png" not in html and "LANDSCAPE_DOCS_FIGURES=1 mkdocs build" in html
    (tmp_path / "docs" / "index.md").write_text(page.format(name="other.png"))
    done = build(full=True)
    assert done.returncode != 0 and "drew no line.png" in done.stderr
