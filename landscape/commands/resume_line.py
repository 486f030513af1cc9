"""The line that finishes an interrupted measurement: the command as the user would type it again (no torch).

Built from the options object itself (every field is the flag of the same name), so it names the source, the
run and every option that differs from its default, and runs as printed."""
from __future__ import annotations

import shlex
from dataclasses import fields
from pathlib import Path


def resume_line(command: str, source: str | Path | None, options, out: Path) -> str:
    """`landscape COMMAND [SOURCE] --flag value ... --resume --out OUT` for a dataclass of `options`."""
    words = ["landscape", command] + ([str(source)] if source is not None else [])
    for field in fields(options):
        value = getattr(options, field.name)
        if value is None or value == field.default:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        else:
            words += [flag, repr(value) if isinstance(value, float) else str(value)]
    return shlex.join(words + ["--resume", "--out", str(out)])
