"""Is an EAGLE head data-limited? Its greedy agreement on sequences it trained on, held aside, and held-out prompts.

    .venv/bin/python scripts/eagle_fit_gap.py HEAD_FOLDER CORPUS.pt[,CORPUS2.pt ...]

Use the corpus files the head was trained on, in the same order (the last 64 sequences are the ones
`train_eagle` held aside). A large gap between "trained on" and the others means more data would help;
no gap and a low score mean more steps or capacity would.
"""

import sys

import torch

from specdec_lib.models.eagle_head import load_eagle
from specdec_lib.models import load_smollm2
from specdec_lib.training.evaluate import cached_held_out
from specdec_lib.training.evaluate import eagle_agreement, target_features
from specdec_lib.training.train_eagle import EagleConfig, load_eagle_data


def main(head_folder: str, corpus: str, n: int = 64) -> None:
    """Print 1st/2nd-draft agreement on n trained-on sequences, the n held-aside ones and the held-out prompts."""
    target, tokenizer = load_smollm2(torch.device("cpu"), torch.float32)
    paths = corpus.split(",")
    data = load_eagle_data(target, paths, progress=False)
    head = load_eagle(target, head_folder)
    held_aside = EagleConfig().n_val
    total = len(data.tokens)
    trained = list(range(0, total - held_aside, max(1, (total - held_aside) // n)))[:n]
    for name, rows in (("trained on", trained), ("held aside", range(total - held_aside, total))):
        a = eagle_agreement(head, [data.tokens[i] for i in rows], [data.features[i] for i in rows], [data.n_prompt[i] for i in rows])
        print(f"{name:<12} 1st draft {a[0]:.3f}  2nd draft {a[1]:.3f}")
    held = cached_held_out(target, tokenizer, paths[0])
    a = eagle_agreement(head, held.sequences, target_features(target, held.sequences, progress=False), held.n_prompt)
    print(f"{'held-out':<12} 1st draft {a[0]:.3f}  2nd draft {a[1]:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
