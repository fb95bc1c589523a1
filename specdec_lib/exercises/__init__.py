"""Checks for the exercises: `check("07.2", answer)` tests a learner's code or number on cases the notebook doesn't show.

It compares against the library's reference, prints a pass, or what failed and a hint (never the
answer), and returns a truthy/falsy `Result`. `python -m specdec_lib.exercises --list` lists them.
One module per chapter; each check registers itself with `@exercise`.
"""

from . import ch01, ch02, ch03, ch04, ch05, ch07, ch08, ch09  # noqa: F401  (each registers its checks)
from .core import EXERCISES, Exercise, Mismatch, Result, check

__all__ = ["EXERCISES", "Exercise", "Mismatch", "Result", "check", "listing"]


def listing() -> str:
    """Every checked exercise, by chapter: its id, what to hand in, and the call."""
    lines, chapter = [], None
    for id in sorted(EXERCISES):
        if id[:2] != chapter:
            chapter = id[:2]
            lines.append(f"chapter {chapter}")
        item = EXERCISES[id]
        lines.append(f"  {id}  {item.answer}\n        {item.usage}")
    return "\n".join(lines)
