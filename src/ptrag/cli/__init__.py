"""The ``ptrag`` command: one Typer app with subcommands.

Each group of subcommands lives in its own module and registers itself on :data:`app`.
:func:`main` turns every :class:`~ptrag.errors.PtragError` into one clear message and exit
status 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import sys

import click

try:  # typer >= 0.29 ships its own copy of click
    import typer._click as _tclick

    _CLICK = (click, _tclick)
except ImportError:  # pragma: no cover
    _CLICK = (click,)
import typer
from rich.console import Console

from ptrag.errors import PtragError

app = typer.Typer(
    name="ptrag",
    help="Predict cellular responses to genetic perturbations with retrieval-augmented generation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_err = Console(stderr=True)

#: The command line being run (``ptrag ...``), for commands that record how their output was made.
current_command: list[str] = []


def _register() -> None:
    from ptrag.cli import data_cmds, eval_cmds, experiment_cmds, genes_cmds, model_cmds, sim_cmds

    for module in (sim_cmds, data_cmds, genes_cmds, model_cmds, eval_cmds, experiment_cmds):
        module.register(app)


_register()


def _setup_logging(debug: bool) -> None:
    import logging
    import warnings

    from rich.logging import RichHandler

    logger = logging.getLogger("ptrag")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(console=_err, show_time=False, show_path=False, markup=False))
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    for name in (
        "lightning.pytorch",
        "lightning.fabric",
        "lightning",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
    ):
        logging.getLogger(name).setLevel(logging.INFO if debug else logging.WARNING)
    if not debug:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        # ptrag resumes its own set sampler mid-epoch (PerturbationPlan.on_load_checkpoint)
        warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 ok, 1 aborted, 2 bad input)."""
    args = list(sys.argv[1:] if argv is None else argv)
    current_command[:] = ["ptrag", *args]
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    _setup_logging(debug)
    try:
        app(args=args, prog_name="ptrag", standalone_mode=False)
    except PtragError as exc:
        if debug:
            raise
        _err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return _exit(2, argv)
    except MemoryError:
        if debug:
            raise
        _err.print(
            "[bold red]error:[/] out of memory while loading or processing the data. "
            "Pass --backed to stream the expression matrix from disk instead of loading it, "
            "or lower --batch-size / --cell-set-size.",
            highlight=False,
            soft_wrap=True,
        )
        return _exit(2, argv)
    except tuple(getattr(c.exceptions, "Abort", click.exceptions.Abort) for c in _CLICK):
        _err.print("aborted.")
        return _exit(1, argv)
    except tuple(getattr(c.exceptions, "ClickException", click.exceptions.ClickException) for c in _CLICK) as exc:
        exc.show()
        return _exit(exc.exit_code, argv)
    except tuple(getattr(c.exceptions, "Exit", click.exceptions.Exit) for c in _CLICK) as exc:
        return _exit(exc.exit_code, argv)
    return _exit(0, argv)


def _exit(code: int, argv: list[str] | None) -> int:
    # Called from the console script (argv None): exit the process; from Python: return.
    if argv is None:
        sys.exit(code)
    return code
