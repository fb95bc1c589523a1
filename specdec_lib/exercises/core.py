"""The check registry: each exercise with a code or number answer registers one function that tests it."""

from __future__ import annotations

import inspect
import traceback
from dataclasses import dataclass
from typing import Any, Callable


class Mismatch(Exception):
    """A learner's answer failed a case: what failed (never the expected answer) and a hint."""

    def __init__(self, what: str, hint: str):
        super().__init__(what)
        self.what, self.hint = what, hint


@dataclass(frozen=True)
class Exercise:
    """One checked exercise: its id ("07.2"), what to hand in, and the function that tests it."""

    id: str
    answer: str  # what `check` expects, in the learner's words
    usage: str  # the call as the notebook writes it
    run: Callable[..., str]  # run(answer, **context) -> a pass message, or raises Mismatch


@dataclass(frozen=True)
class Result:
    """What `check` found: truthy when the answer passed, so `assert check(...)` works in a solution."""

    id: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return f"{'✓' if self.passed else '✗'} {self.id}: {self.message}"


EXERCISES: dict[str, Exercise] = {}


def exercise(id: str, answer: str, usage: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Register the decorated function as the check of exercise `id` (chapter.number, as the notebooks number them)."""
    def register(run: Callable[..., str]) -> Callable[..., str]:
        if id in EXERCISES:
            raise ValueError(f"exercise {id} has two checks")
        EXERCISES[id] = Exercise(id, answer, usage, run)
        return run
    return register


def learner_code(what: str, call: Callable[[], Any]) -> Any:
    """Run the learner's code; an exception in it becomes a Mismatch that names it, not a crash of the check."""
    try:
        return call()
    except Mismatch:
        raise
    except Exception as error:  # the learner's bug, reported as a failed case
        where = traceback.extract_tb(error.__traceback__)[-1]
        raise Mismatch(f"{what} raised {type(error).__name__}: {error} (line {where.lineno} of {where.name})",
                       "run that case yourself and read the traceback") from None


def as_number(value: Any, what: str, hint: str) -> float:
    """A learner's value (an int, a float, a 0-d tensor) as a float, or a Mismatch saying `what` is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise Mismatch(f"{what} is {value!r}, not a number", hint) from None


def check(id: str, answer: Any, *, quiet: bool = False, **context: Any) -> Result:
    """Test `answer` to exercise `id` on cases the notebook doesn't show; print a pass, or what failed and a hint."""
    if id not in EXERCISES:
        raise ValueError(f"no check for exercise {id!r}; checked exercises: {', '.join(sorted(EXERCISES))} "
                         "(python -m specdec_lib.exercises --list)")
    run = EXERCISES[id].run
    try:
        inspect.signature(run).bind(answer, **context)
    except TypeError as error:
        raise TypeError(f"exercise {id} is checked as {EXERCISES[id].usage} ({error})") from None
    try:
        result = Result(id, True, run(answer, **context))
    except Mismatch as failed:
        result = Result(id, False, f"{failed.what}\n   hint: {failed.hint}")
    if not quiet:
        print(result)
    return result
