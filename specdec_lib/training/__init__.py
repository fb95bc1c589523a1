"""Draft training: make a draft for the embedded target by self-distillation. Chapters 06 and 08.

- corpus: the target's own continuations and top-k logits (the training data)
- train_draft: the token-only draft's optimisation (batches, loss, schedule, `train`)
- train_eagle: the EAGLE head's loss and training (chapter 08)
- on_policy: the draft's own continuations, labelled by the target (chapter 08)
- evaluate: held-out continuations, agreement and c (`score_draft`)

The draft networks themselves are in `specdec_lib.models`, the prompts in `specdec_lib.prompts`,
and the command line, `python -m specdec_lib.training data|train|eval|eagle|onpolicy`, in `specdec_lib.cli.training`.
"""
