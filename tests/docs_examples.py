"""Running the code blocks of a Markdown page as a reader would, top to bottom, in one fresh folder.

A fenced block is code when its language is python, bash, sh, shell or none (a shell block); toml blocks must be
valid TOML; text blocks are output. A block that cannot run (report-scale sizes, a GPU, a cluster) is preceded by
`<!-- not run: REASON -->`, and the reason is required: nothing is skipped silently.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

SHELL = {"bash", "sh", "shell", "console", ""}
MARKER = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)```(\w*)[^\n]*$")


@dataclass
class Block:
    language: str
    code: str
    line: int  # of the opening fence, from 1
    not_run: str | None  # the reason, when marked


def blocks_of(text: str) -> list[Block]:
    """Every fenced block of a page, with the marker just above it (blank lines between allowed)."""
    lines = text.split("\n")
    out, index = [], 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        indent, language = match.group(1), match.group(2).lower()
        end = next(j for j in range(index + 1, len(lines)) if lines[j].strip() == "```")
        code = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[index + 1:end])
        above = next((lines[j] for j in range(index - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.search(above)
        out.append(Block(language, code, index + 1, marker.group(1) if marker else None))
        index = end + 1
    return out


def shims(folder: Path) -> Path:
    """A bin folder where `landscape`, `python` and `python3` are this interpreter (the tests' environment)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, line in (("landscape", f'exec "{sys.executable}" -m landscape "$@"'),
                       ("python", f'exec "{sys.executable}" "$@"'), ("python3", f'exec "{sys.executable}" "$@"')):
        path = folder / name
        path.write_text(f"#!/bin/sh\n{line}\n")
        path.chmod(0o755)
    return folder


def run_page(page: Path, folder: Path, repo: Path, timeout: float) -> list[str]:
    """Run a page's code blocks in order in `folder` (with data/ prepared by the caller); the failures, one line
    each with the block's line number and the end of its error output."""
    problems = []
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PATH": f"{shims(folder / '.bin')}{os.pathsep}{os.environ.get('PATH', '')}"}
    for number, block in enumerate(blocks_of(page.read_text(encoding="utf-8"))):
        where = f"{page.name}:{block.line}"
        if block.not_run is not None:
            if not block.not_run:
                problems.append(f"{where}: a not-run marker needs a reason")
            continue
        if block.language == "toml":
            try:
                tomllib.loads(block.code)
            except tomllib.TOMLDecodeError as exc:
                problems.append(f"{where}: not valid TOML ({exc})")
            continue
        if block.language == "python":
            script = folder / f".block_{number}.py"
            script.write_text(block.code)
            command = [sys.executable, str(script)]
        elif block.language in SHELL:
            command = ["bash", "-euo", "pipefail", "-c", block.code]
        else:
            continue  # text, output, other formats: not code
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            problems.append(f"{where}: exit {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")
            break  # later blocks build on this one
    return problems
