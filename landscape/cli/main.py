"""The `landscape` command: parses arguments and calls the library; nothing else.

Heavy imports (torch, matplotlib) happen inside the commands that need them, so `landscape --help`,
`landscape info` and `landscape plot` never import torch. Every error the user can fix is printed
as one line (`landscape <command>: error: ...`) with exit status 2; a failure during a run exits 1.
"""
from __future__ import annotations

import sys

import click

from landscape.cli import ablate, analysis, run_files  # noqa: F401  (each attaches its commands to the group)
from landscape.cli.group import cli
from landscape.errors import LandscapeError

__all__ = ["cli", "main"]


def fail(message: str, code: int) -> None:
    """Print one line to stderr and exit with `code`."""
    click.echo(" ".join(message.split()), err=True)
    sys.exit(code)


def command_of(args: list[str]) -> str:
    """The command's words (`ablate run`), as the error lines name it."""
    words = [a for a in args[:2] if not a.startswith("-")]
    return " ".join(words[:2] if words[:1] == ["ablate"] else words[:1])


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: one-line errors, exit 2 for usage errors, 1 for run failures."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = cli.main(args=args, prog_name="landscape", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help())
        code = 0
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "landscape"
        fail(f"{where}: error: {exc.format_message()} (see '{where} --help')", 2)
    except click.ClickException as exc:
        fail(f"landscape: error: {exc.format_message()}", exc.exit_code)
    except click.exceptions.Abort:
        fail("landscape: aborted", 130)
    except LandscapeError as exc:
        fail(f"landscape {command_of(args)}: error: {exc}".replace("  ", " "), exc.exit_code)
    except OSError as exc:  # a write that failed (disk full, a file-size limit): the old files are intact
        fail(f"landscape {command_of(args)}: error: {exc}; the files written before are intact".replace("  ", " "), 1)
    except MemoryError:
        fail(f"landscape {command_of(args)}: error: out of memory; use fewer images, points or a smaller model"
             .replace("  ", " "), 1)
    except KeyboardInterrupt:
        fail("landscape: interrupted", 130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
