"""The ``qra`` command line: verbs info, plan, memory, eval, profile, search, worker, train, export
and experiment.

Each verb is a typed function in its own module (``info.py``, ``plan.py``, ``memory.py``)
whose docstring is its help: the summary becomes the verb's description and the ``Args:``
entries become the options' help. A verb whose module names an ``OPTIONS`` dataclass (search,
train) takes one argument, that dataclass, built from its fields (``cli/options.py``: the
field docstrings are the help) and run by a library recipe. This module builds the argparse
parser from them and turns every ``ValueError``/``OSError`` into one line
``qra <verb>: error: <message>`` on stderr with exit code 2 (``--debug`` re-raises instead,
for the traceback).

Only light modules are imported here, so ``qra --help`` answers without loading torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from qradaptor.cli import eval as eval_verb
from qradaptor.cli import experiment as experiment_verb
from qradaptor.cli import export as export_verb
from qradaptor.cli import info as info_verb
from qradaptor.cli import memory as memory_verb
from qradaptor.cli import plan as plan_verb
from qradaptor.cli import profile as profile_verb
from qradaptor.cli import search as search_verb
from qradaptor.cli import train as train_verb
from qradaptor.cli import worker as worker_verb
from qradaptor.cli.common import DEBUG_DEST, VERB_DEST, docstring_help

NO_PROGRESS_DEST = "no_progress"
"""The verbs' keyword for ``--no-progress``."""

USAGE_ERROR = 2
"""Exit code of a bad input, as argparse uses."""
VERBS = (
    info_verb,
    plan_verb,
    memory_verb,
    eval_verb,
    profile_verb,
    search_verb,
    worker_verb,
    train_verb,
    export_verb,
    experiment_verb,
)
"""Modules that each define ``VERB`` (a function) and ``add_arguments(parser, help)``, and
optionally ``OPTIONS`` (the dataclass ``VERB`` takes)."""
OPTIONS_DEST = "_options"
"""Namespace attribute holding the verb's options dataclass (None: keyword arguments)."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The verb's description as written, and every option's default after its help.

    argparse's ArgumentDefaultsHelpFormatter also prints "(default: None)" and "(default:
    False)"; an unset option or a flag says nothing here.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        # Identity, not ==: a default of 0 (--seed, --workers) is shown.
        unset = any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS))
        if "%(default)" in text or unset or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, like the verbs' errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qradaptor")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``qra`` parser with one subparser per verb."""
    parser = _Parser(
        prog="qra",
        description="QR-Adaptor: per-layer bit-widths and LoRA ranks under a memory budget.",
    )
    parser.add_argument("--version", action="version", version=f"qra {_version()}")
    parser.add_argument(
        "--debug", dest=DEBUG_DEST, action="store_true", help="show tracebacks instead of one-line errors"
    )
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: the verb's --debug must not reset a `qra --debug <verb>` to False.
    common.add_argument(
        "--debug",
        dest=DEBUG_DEST,
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks instead of one-line errors",
    )
    # Every verb takes it; the verbs with long steps (a function with a no_progress argument)
    # show a bar on a terminal and a line every 30 s in a log (qradaptor/progress.py).
    common.add_argument(
        "--no-progress",
        dest=NO_PROGRESS_DEST,
        action="store_true",
        help="no progress output (by default a bar on a terminal, a line every 30 s in a log)",
    )
    verbs = parser.add_subparsers(dest=VERB_DEST, metavar="VERB", parser_class=_Parser)
    for module in VERBS:
        summary, description, helps = docstring_help(module.VERB)
        sub = verbs.add_parser(
            module.VERB.__name__,
            help=summary,
            description=description,
            parents=[common],
            formatter_class=_HelpFormatter,
        )
        module.add_arguments(sub, helps)
        sub.set_defaults(_call=module.VERB, **{OPTIONS_DEST: getattr(module, "OPTIONS", None)})
    return parser


def _call(function: Callable[..., int], args: argparse.Namespace) -> int:
    import inspect

    kwargs: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k not in (VERB_DEST, DEBUG_DEST, OPTIONS_DEST, "_call")
    }
    options = getattr(args, OPTIONS_DEST, None)
    if options is not None:
        from qradaptor.cli.options import options_from

        return function(options_from(options, kwargs))
    if NO_PROGRESS_DEST not in inspect.signature(function).parameters:
        kwargs.pop(NO_PROGRESS_DEST, None)  # a quick verb: nothing to show
    return function(**kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``qra`` with ``argv`` (default ``sys.argv[1:]``) and returns the exit code.

    Args:
        argv: the arguments after the program name.

    Returns:
        0 on success, 1 when ``memory --verify`` finds a mismatch, 2 on bad input.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version and usage errors
        return stop.code if isinstance(stop.code, int) else USAGE_ERROR
    if getattr(args, VERB_DEST) is None:
        parser.print_help()
        return 0
    try:
        return _call(args._call, args)
    except (ValueError, OSError) as err:
        if getattr(args, DEBUG_DEST):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"qra {getattr(args, VERB_DEST)}: error: {message}", file=sys.stderr)
        return USAGE_ERROR


__all__ = ["build_parser", "main"]
