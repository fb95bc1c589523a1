"""Argument checks shared by the command lines: a bad value is one argparse error line (exit 2), never a traceback.

Each `type=` function raises `argparse.ArgumentTypeError`, which argparse prints after the flag's
name. `library_errors_to_usage` turns the library's own errors (bad settings, a missing model) into
the same kind of line where they surface at run time; anything unexpected keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Iterator

from ..models import ModelUnavailableError, pick_device

# What a user can cause with a flag; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, ModelUnavailableError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def _int_at_least(text: str, lowest: int) -> int:
    """An integer >= lowest, or an ArgumentTypeError saying so."""
    try:
        value = int(text)
    except ValueError:
        value = lowest - 1
    if value < lowest:
        raise argparse.ArgumentTypeError(f"must be an integer >= {lowest}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _int_at_least(text, 0)


def _number(text: str, what: str) -> float:
    """A finite float, or an ArgumentTypeError saying what was expected."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a temperature: 0 means greedy)."""
    value = _number(text, "a number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(text, "a number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1]."""
    value = _number(text, "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def existing_file(text: str) -> str:
    """A path to a file that exists."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def existing_folder(text: str) -> str:
    """A path to a folder that exists."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text!r}")
    return text


def existing_files(text: str) -> list[str]:
    """Comma-separated paths to files that exist."""
    paths = [p for p in text.split(",") if p.strip()]
    if not paths:
        raise argparse.ArgumentTypeError(f"takes comma-separated file paths, got {text!r}")
    return [existing_file(p) for p in paths]


def writable_path(text: str) -> str:
    """A path whose folder exists, so that writing there at the end of a long run won't fail."""
    path = Path(text)
    if path.is_dir() and path.suffix:
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, expected a file path")
    if not path.resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {str(path.parent)!r} does not exist")
    return text


def device(text: str) -> str:
    """A device this machine has: cpu, cuda, cuda:N or mps."""
    try:
        pick_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _ints_at_least(text: str, lowest: int) -> list[int]:
    """Comma-separated integers, each >= lowest, e.g. '1,2,4'."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < lowest:
        raise argparse.ArgumentTypeError(f"takes comma-separated integers >= {lowest}, got {text!r}")
    return values


def int_list(text: str) -> list[int]:
    """Comma-separated integers >= 0, e.g. layer indices '0,1'."""
    return _ints_at_least(text, 0)


def positive_int_list(text: str) -> list[int]:
    """Comma-separated integers >= 1, e.g. draft lengths '1,2,4'."""
    return _ints_at_least(text, 1)


DYNAMIC_TREES = ("dynamic", "dynamic-costs")  # --tree values that grow a tree per step instead of a fixed shape


def tree_shape(text: str) -> list[int] | str:
    """A --tree value: branching factors per depth ('2,2,1,1'), or 'dynamic' / 'dynamic-costs'."""
    if text.strip() in DYNAMIC_TREES:
        return text.strip()
    try:
        return _ints_at_least(text, 1)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"takes branching factors such as 2,2,1,1, or one of {', '.join(DYNAMIC_TREES)}; "
                                         f"got {text!r}") from None


def dynamic_settings(text: str) -> tuple[int, int, int]:
    """--dynamic-tree DEPTH,TOP_K,BUDGET: three integers >= 1."""
    values = _ints_at_least(text, 1)
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"takes DEPTH,TOP_K,BUDGET, three integers >= 1, e.g. 4,3,8; got {text!r}")
    return tuple(values)


@contextlib.contextmanager
def library_errors_to_usage(parser: argparse.ArgumentParser, flag: str | None = None) -> Iterator[None]:
    """Turn a user-caused library error inside the block into `parser.error` (usage, one line, exit 2)."""
    try:
        yield
    except USER_ERRORS as err:
        message = " ".join(str(err).split())  # one line, even for the library's multi-line advice
        parser.error(f"{flag}: {message}" if flag else message)
