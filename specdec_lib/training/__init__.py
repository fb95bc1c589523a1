"""Draft training: make a draft for the embedded target by self-distillation. Chapter 06.

- prompts: the benchmark's prompt set, the held-out set, training prompts, load_prompts
- corpus: the target's own continuations and top-k logits (the training data)
- draft_model: RestrictedVocabLlama, a small draft scoring part of the vocabulary; save/load
- train_draft: the recipe and its CLI, `python -m specdec_lib.training data|train|eval`
"""
