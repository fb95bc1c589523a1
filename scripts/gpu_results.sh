#!/usr/bin/env bash
# Chapter 05's GPU measurements (issue 6) in one go, written as JSON + PNG:
#   1. the embedded pair (SmolLM2-135M-Instruct + its trained draft), greedy, checked token by token,
#      chains of every K in KS and the token trees in TREES (chapter 09);
#   2. the seed-sized random pair (gpt2-medium / gpt2 shapes), timed with the acceptance rate that
#      run 1 measured imposed on it (its random draft never agrees; see specdec_lib/bench/seed_pair.py);
#   3. every notebook under nbval with SPECDEC_DEVICE set to the device, so that they are checked there too
#      (its log goes to OUTDIR/${prefix}_notebooks.log; NOTEBOOKS=0 skips it, NBVAL_ARGS adds pytest flags).
#
#   scripts/gpu_results.sh [OUTDIR]        on a CUDA machine with the environment (default OUTDIR docs/results)
#   DEVICE=cpu DTYPE=float32 QUICK=1 scripts/gpu_results.sh /tmp/dry    the same path, small, on a CPU
# Environment: PYTHON (default python3), DEVICE (cuda), DTYPE (bfloat16), KS (1,2,3,4,6,8),
#   TREES ("2,2,1,1 4,2,1,1 8,4,2,1", space-separated), QUICK, NOTEBOOKS (1), NBVAL_ARGS.
set -euo pipefail
out=${1:-docs/results}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
dtype=${DTYPE:-bfloat16}
ks=${KS:-1,2,3,4,6,8}
trees=${TREES:-2,2,1,1 4,2,1,1 8,4,2,1}
# A prefix names where the numbers came from, so a dry run never overwrites GPU results.
prefix=$([[ $device == cuda ]] && echo gpu || echo "$device")
size=(--repeats 3)
if [[ -n ${QUICK:-} ]]; then size=(--max-new-tokens 8 --num-prompts 1 --repeats 1); ks=1,2; trees=2,1; prefix=quick_$prefix; fi
mkdir -p "$out"
common=(--device "$device" --dtype "$dtype" --k "$ks" "${size[@]}")

tree_flags=()
for tree in $trees; do tree_flags+=(--tree "$tree"); done

"$py" -m specdec_lib.bench --preset smollm2 "${common[@]}" "${tree_flags[@]}" \
    --out "$out/${prefix}_smollm2.json" --plot "$out/${prefix}_smollm2.png"
"$py" -m specdec_lib.bench --preset seed-gpt2 --alpha "$out/${prefix}_smollm2.json" "${common[@]}" \
    --out "$out/${prefix}_seed_gpt2.json" --plot "$out/${prefix}_seed_gpt2.png"
if [[ ${NOTEBOOKS:-1} == 1 ]]; then
    # -o addopts= drops pyproject's options, so that the run's own flags are the whole story.
    SPECDEC_DEVICE="$device" "$py" -m pytest -o addopts= -p no:cacheprovider --nbval-lax --nbval-current-env \
        --nbval-cell-timeout=900 notebooks ${NBVAL_ARGS:-} 2>&1 | tee "$out/${prefix}_notebooks.log"
fi
