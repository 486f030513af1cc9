"""MkDocs hook: the tutorials' figures, drawn by running the pages' own code blocks (never committed).

A page shows a figure its blocks draw with a marker line of its own,
`<!-- figure: figures/plane_contour.png | The random plane around the model -->`: the image's path in the folder
the page's blocks run in, then the caption. With `LANDSCAPE_DOCS_FIGURES=1` the build runs every page that has
such markers top to bottom in a fresh folder (as the test suite does: `tests/docs_examples.run_page`, with the
CIFAR subset of `LANDSCAPE_DOCS_DATA`, default `./data`), copies the named images into the site beside the page
and shows them in place of the markers; a page whose blocks fail, or that does not draw a named image, fails
the build. Without it (the fast `mkdocs build --strict` that the suite and CI run) each marker becomes one line
naming the figure the full build draws there.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[1]
FIGURE = re.compile(r"^<!--\s*figure:\s*(\S+?)\s*\|\s*(.*?)\s*-->[ \t]*$", re.MULTILINE)
FULL_BUILD = "LANDSCAPE_DOCS_FIGURES"
drawn: dict[str, dict[str, str]] = {}  # page source path -> figure path in its run folder -> site source path


def on_files(files, config):
    """With LANDSCAPE_DOCS_FIGURES=1: run each page with figure markers and add its images to the site."""
    drawn.clear()
    if os.environ.get(FULL_BUILD) != "1":
        return files
    sys.path.insert(0, str(REPO))
    from tests.docs_examples import run_page

    work = Path(tempfile.mkdtemp(prefix="landscape-docs-figures-"))
    data = Path(os.environ.get("LANDSCAPE_DOCS_DATA", "data")).resolve()
    for page in list(files.documentation_pages()):
        figures = FIGURE.findall(Path(page.abs_src_path).read_text(encoding="utf-8"))
        if not figures:
            continue
        folder = work / "runs" / page.src_uri.replace("/", "_")
        folder.mkdir(parents=True)
        (folder / "data").symlink_to(data, target_is_directory=True)
        problems = run_page(Path(page.abs_src_path), folder, REPO, timeout=3600)
        if problems:
            raise PluginError(f"{page.src_uri}: its blocks failed, so its figures cannot be drawn: {problems[0]}")
        drawn[page.src_uri] = {}
        for figure, _ in figures:
            image = folder / figure
            if not image.is_file():
                raise PluginError(f"{page.src_uri}: its blocks drew no {figure}; fix the marker or the blocks")
            uri = (Path(page.src_uri).parent / "figures" / Path(page.src_uri).stem / image.name).as_posix()
            (work / "site" / uri).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, work / "site" / uri)
            files.append(File(uri, str(work / "site"), config["site_dir"], config["use_directory_urls"]))
            drawn[page.src_uri][figure] = uri
    return files


def on_page_markdown(markdown, page, config, files):
    """Each figure marker: the image drawn (full build), or a line naming it (fast build)."""
    images = drawn.get(page.file.src_uri)

    def show(match: re.Match) -> str:
        figure, caption = match.group(1), match.group(2)
        if images is None:
            return (f"*Figure: {caption} (`{figure}`, drawn by the page's commands above; the full docs build, "
                    f"`{FULL_BUILD}=1 mkdocs build`, shows it here).*")
        return f"![{caption}](figures/{Path(page.file.src_uri).stem}/{Path(images[figure]).name})\n\n*{caption}.*"

    return FIGURE.sub(show, markdown)
