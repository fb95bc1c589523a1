#!/usr/bin/env bash
# What this project's lent GPU ran on 2026-11-30 (through `scripts/device_payload.sh exec scripts/gpu_session.sh`):
#   1. two more self-distillation corpora for chapter 08's EAGLE head: the chapter-06 `data` command on the
#      next two training-prompt seeds (1 and 2), on CUDA in float32 (about 16 CPU-minutes each on a 2-core CPU).
#      Only tokens travel back (the EAGLE head's labels come from the target's features, computed on the CPU);
#   2. scripts/gpu_results.sh (chapters 05, 09, 10) with a shorter K list and no notebooks, within a time limit.
# Everything lands in $OUT: corpus_seed1.pt, corpus_seed2.pt, gpu_results.tgz.
# Dry run on a CPU: OUT=/tmp/dry DEVICE=cpu MAX_PROMPTS=2 RESULTS_LIMIT=1 PYTHON=.venv/bin/python scripts/gpu_session.sh
set -uo pipefail
out=${OUT:?run through the device tool, which sets OUT}
for seed in 1 2; do
    "${PYTHON:-python3}" -m specdec_lib.training data --device "${DEVICE:-cuda}" --batch-size 128 --seed "$seed" --minutes "${MINUTES:-2}" \
        ${MAX_PROMPTS:+--max-prompts $MAX_PROMPTS} --out "/tmp/corpus$seed.pt"
    "${PYTHON:-python3}" - "$seed" "$out" <<'PY'
import sys, torch
from specdec_lib.training.corpus import load_corpus, save_corpus
seed, out = sys.argv[1], sys.argv[2]
samples = load_corpus(f"/tmp/corpus{seed}.pt")
for s in samples:  # keep the target's first choice only: the top-32 logits would not fit the transfer
    s.topk_values, s.topk_ids = s.topk_values[:, :1].clone(), s.topk_ids[:, :1].clone()
save_corpus(samples, f"{out}/corpus_seed{seed}.pt")
print(seed, len(samples), "sequences", sum(len(s.topk_ids) for s in samples), "target tokens")
PY
done
res=/tmp/gpu_results && mkdir -p "$res"
KS=${KS:-1,2,3,4,6} TREES=${TREES:-2,2,1,1 4,2,1,1} NOTEBOOKS=0 timeout "${RESULTS_LIMIT:-300}" scripts/gpu_results.sh "$res" \
    > "$res/gpu_results.log" 2>&1
echo "gpu_results.sh exit $?"
tail -5 "$res/gpu_results.log"
tar czf "$out/gpu_results.tgz" -C "$res" .
