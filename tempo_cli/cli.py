"""The tempo command line: builds the Typer app and is the one place errors become messages.

Keep this module free of torch imports: ``tempo --help`` must answer instantly.
"""

from __future__ import annotations

import os
import sys

import typer

from tempo_cli import __version__
from tempo_cli.errors import TempoError

app = typer.Typer(
    name="tempo",
    help="Long video generation by next-frame-rate prediction (TempoMaster).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Long video generation by next-frame-rate prediction (TempoMaster): a low-frame-rate blueprint of the
    whole clip first, then each finer frame rate with the coarser frames as anchors."""


@app.command()
def version() -> None:
    """Print tempo's version."""
    typer.echo(__version__)


def build_app() -> typer.Typer:
    """Register the stage plugins, then the informational commands, on ``app``; commands already registered
    (by an earlier ``main()`` in the same process) are not registered again."""
    from tempo_cli import commands
    from tempo_cli.plugins import load_stages

    registered = {info.name for info in app.registered_commands}
    for loaded in load_stages():
        if loaded.stage.name not in registered:
            app.command(name=loaded.stage.name, help=loaded.stage.command.__doc__)(loaded.stage.command)
    for command in (commands.plan, commands.inspect, commands.stages, commands.presets):
        if command.__name__ not in registered:
            app.command(name=command.__name__)(command)
    return app


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; TempoErrors become one line on stderr (``TEMPO_DEBUG=1`` shows the traceback)."""
    try:
        return _run(argv)
    finally:
        if "tempo_cli.distributed" in sys.modules:  # only loaded (with torch) by commands that run models
            sys.modules["tempo_cli.distributed"].shutdown()


def _run(argv: list[str] | None) -> int:
    try:
        code = build_app()(args=argv, prog_name="tempo", standalone_mode=False)
    except TempoError as exc:
        if os.environ.get("TEMPO_DEBUG"):
            raise
        message = f"tempo: error: {exc.message}"
        if exc.hint:
            message += f"\n  hint: {exc.hint}"
        print(message, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tempo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # Typer's vendored Click raises its own usage/abort exceptions
        code = _click_exit(exc)
        if code is None:
            raise
        return code
    if code == 130:  # Typer turns Ctrl-C into Exit(130), and returns an Exit's code in this mode
        print("tempo: interrupted", file=sys.stderr)
    return code if isinstance(code, int) else 0  # a command returns None


def _click_exit(exc: Exception) -> int | None:
    """Exit code for the vendored Click's exceptions (usage errors print themselves), else None."""
    show = getattr(exc, "show", None)
    exit_code = getattr(exc, "exit_code", None)
    if type(exc).__name__ == "Abort":
        print("tempo: aborted", file=sys.stderr)
        return 1
    if callable(show) and isinstance(exit_code, int):
        show()
        return exit_code
    if type(exc).__name__ == "Exit" and isinstance(exit_code, int):
        return exit_code
    return None


if __name__ == "__main__":
    sys.exit(main())
