"""The ``trajscope`` command line: one typer app, one module per group of commands.

Each module exposes ``register(app)`` that adds its commands; errors a user can fix are raised as
:class:`trajscope.errors.UserError` and printed as one line (exit code 2).
"""

from __future__ import annotations

import sys

import typer

from trajscope.errors import UserError

app = typer.Typer(
    name="trajscope",
    help="Record, analyse and serve full-resolution training trajectories.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from trajscope.cli import analyze, experiments, fsck, produce, serve  # noqa: E402

for _module in (produce, analyze, serve, experiments, fsck):
    _module.register(app)


def main() -> None:
    """Entry point of the ``trajscope`` script: user errors become one line on stderr, exit 2."""
    try:
        code = app(standalone_mode=False)  # click returns (not raises) the code of typer.Exit here
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except UserError as err:
        print(f"trajscope: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except typer.Abort:
        raise SystemExit(130) from None
    except Exception as err:  # click usage errors and the like
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            raise SystemExit(err.exit_code) from None
        if isinstance(err, click.exceptions.Exit):
            raise SystemExit(err.exit_code) from None
        raise
