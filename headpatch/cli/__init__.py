"""`headpatch` command line: a thin layer over headpatch.pipeline and the Python API.

Every command turns its flags into the option records of headpatch.options, calls one API function and prints the
result; a HeadpatchError becomes one `headpatch: error: ...` line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

from headpatch.pear.memory import allocate_on_huge_pages

allocate_on_huge_pages()  # before the commands below import torch

import typer

from headpatch.cli import checkpoints, pear, qrhead
from headpatch.cli.evaluate import eval_command
from headpatch.errors import HeadpatchError, printable

app = typer.Typer(help="Make a causal LM read its context better and ship it as an ordinary checkpoint.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _print_versions(value: bool) -> None:
    if value:
        from headpatch._version import library_versions

        for name, found in library_versions().items():
            typer.echo(f"{name}: {found}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_versions,
                                 help="print the versions of headpatch, Python and the libraries it runs on."),
) -> None:
    """Make a causal LM read its context better and ship it as an ordinary checkpoint."""


for command in (pear.locate, pear.train, pear.tune, pear.export, checkpoints.push, checkpoints.inspect,
                checkpoints.verify, checkpoints.card):
    app.command()(command)
app.add_typer(qrhead.app, name="qrhead")
app.command()(qrhead.rerank)
app.command(name="eval")(eval_command)


_MESSAGE_LIMIT = 2000  # a message may quote the user's input, which can be a megabyte on one line


def _fail(message: str) -> None:
    message = printable(message)
    if len(message) > _MESSAGE_LIMIT:
        message = f"{message[:_MESSAGE_LIMIT]}... ({len(message) - _MESSAGE_LIMIT} more characters)"
    typer.echo(f"headpatch: error: {message}", err=True)
    sys.exit(2)


def _os_error(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename is not None else ""
    return f"{exc.strerror or exc}{where}"


def _click_error(exc: Exception) -> str | None:
    """What kind of click error `exc` is, by class name: newer typer ships its own copy of click, older typer uses
    click itself, so the classes cannot be imported from one place."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return next((name for name in ("NoArgsIsHelpError", "UsageError", "ClickException") if name in names), None)


def main() -> None:
    """Console entry point: user errors, and the system's refusals (disk full, read-only or missing paths), become
    one line on stderr and exit code 2."""
    try:
        # not standalone: click would print a usage screen and a boxed message for a mistyped flag, not one line
        code = app(standalone_mode=False)
    except HeadpatchError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(_os_error(exc))
    except Exception as exc:
        kind = _click_error(exc)
        if kind is None:
            raise
        if kind == "NoArgsIsHelpError":
            exc.show()  # `headpatch` alone, or a group alone: its help, as click prints it
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if kind == "UsageError" and ctx is not None else ""
        _fail(f"{exc.format_message()}{where}")
    if isinstance(code, int) and code:  # an exit code click returned: 130 after Ctrl-C
        sys.exit(code)
