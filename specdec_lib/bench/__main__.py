"""`python -m specdec_lib.bench`: see specdec_lib/bench/cli.py."""

from .cli import main

main()
