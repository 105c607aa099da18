"""Around every entry script's ``main()``: an error the user can cause is one line, not a traceback.

Usage errors (a bad flag value, a malformed ``--config``) print ``error: ...`` and exit 2, as
argparse does, but without argparse's usage block, which for a hundred flags buries the message.
Failures at run time that come from the user's files (a missing or corrupt checkpoint, a malformed
dataset, a full disk) print ``error: ...`` and exit 1. ``--debug`` shows the full traceback instead.
Standard library only, so that scripts which never touch torch (generate_IN100.py) stay fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

USAGE_EXIT = 2
RUNTIME_EXIT = 1
INTERRUPTED_EXIT = 130  # the shell's code for a run stopped by Ctrl-C
# what a user's input raises at run time: missing or unreadable files and full disks (OSError),
# corrupt checkpoints and weights of another shape (RuntimeError, torch's errors included),
# malformed datasets (data.datasets.DatasetError, a ValueError; utils/ may not import data/)
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, RuntimeError, ValueError)


def one_line_usage(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make the parser's usage errors one line (``error: MESSAGE``) with exit status 2."""

    def error(message: str) -> None:
        parser.exit(USAGE_EXIT, f"error: {message} (--help lists the flags)\n")

    parser.error = error  # type: ignore[method-assign]
    return parser


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    if "--debug" not in parser._option_string_actions:
        parser.add_argument("--debug", action="store_true",
                            help="on an error, print the full Python traceback (default: one line)")


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (and the next one when the first is only
    a heading such as "Error(s) in loading state_dict for ResNet:"), or the exception's type name."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def hint(error: BaseException) -> str:
    if "out of memory" in str(error).lower():
        return "; lower -b/--batch-size (or use --amp bf16/fp16)"
    return ""


def run(main: Callable[..., Any], *main_args: Any, debug: bool | None = None) -> Any:
    """Call main(*main_args); a user-caused failure becomes ``error: ...`` (exit 1) unless debug.

    ``debug`` defaults to the parsed ``--debug`` of an argparse.Namespace argument. SystemExit
    (including the ``error: ...`` exits raised deeper down) passes through unchanged.
    """
    if debug is None:
        debug = any(getattr(a, "debug", False) for a in main_args
                    if isinstance(a, argparse.Namespace))
    try:
        return main(*main_args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        raise SystemExit(INTERRUPTED_EXIT) from None
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"error: {first_line(e)}{hint(e)} (--debug shows the traceback)", file=sys.stderr)
        raise SystemExit(RUNTIME_EXIT) from None
