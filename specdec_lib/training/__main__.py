"""`python -m specdec_lib.training data|train|eval`: see specdec_lib/training/train_draft.py."""

from .train_draft import main

main()
