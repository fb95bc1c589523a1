"""python -m specdec_lib.exercises --list: the checked exercises, by chapter."""

from __future__ import annotations

import argparse

from . import listing


def main(argv: list[str] | None = None) -> None:
    """List the checks (the only command: checks run inside the notebooks, on the learner's objects)."""
    parser = argparse.ArgumentParser(prog="python -m specdec_lib.exercises", description=__doc__)
    parser.add_argument("--list", action="store_true", help="list the checked exercises by chapter")
    args = parser.parse_args(argv)
    if not args.list:
        parser.print_help()
        print('\nIn a notebook: from specdec_lib.exercises import check; check("07.2", HybridDrafter)')
        return
    print(listing())


if __name__ == "__main__":
    main()
