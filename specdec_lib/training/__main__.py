"""`python -m specdec_lib.training data|train|eval|eagle|onpolicy`: see specdec_lib/cli/training.py."""

from ..cli.training import main

main()
