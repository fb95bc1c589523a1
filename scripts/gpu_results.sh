#!/usr/bin/env bash
# Chapter 05's GPU measurements (issue 6) in one go, written as JSON + PNG:
#   1. the embedded pair (SmolLM2-135M-Instruct + its trained draft), greedy, checked token by token,
#      chains of every K in KS and the token trees in TREES (chapter 09);
#   2. the seed-sized random pair (gpt2-medium / gpt2 shapes), timed with the acceptance rate that
#      run 1 measured imposed on it (its random draft never agrees; see specdec_lib/bench/seed_pair.py);
#   3. chapter 10: both pairs again with the static cache and compiled steps (K sweep), and `bench compare`
#      on the embedded pair at COMPARE_K: target only and our loop, eager dynamic / static / static+compiled,
#      next to HF assisted generation (it has no static cache), all in one process;
#   4. chapter 11: the batch-size sweep (plain, fixed K, cost-aware) on the embedded pair;
#   5. every notebook under nbval with SPECDEC_DEVICE set to the device, so that they are checked there too
#      (its log goes to OUTDIR/${prefix}_notebooks.log; NOTEBOOKS=0 skips it, NBVAL_ARGS adds pytest flags).
#
#   scripts/gpu_results.sh [OUTDIR]        on a CUDA machine with the environment (default OUTDIR docs/results)
#   DEVICE=cpu DTYPE=float32 QUICK=1 scripts/gpu_results.sh /tmp/dry    the same path, small, on a CPU
# Environment: PYTHON (default python3), DEVICE (cuda), DTYPE (bfloat16), KS (1,2,3,4,6,8),
#   TREES ("2,2,1,1 4,2,1,1 8,4,2,1", space-separated), COMPARE_K (4), COMPILE (1; QUICK makes it 0: compiling
#   SmolLM2 takes minutes on a CPU, so the dry run takes the static paths eagerly and tests/test_static_cache.py
#   covers compiling), QUICK (small runs; chapter 10's two static sweeps are left out, compare stays),
#   BATCHES (1,2,4,8,16,32), NOTEBOOKS (1), NBVAL_ARGS.
set -euo pipefail
out=${1:-docs/results}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
dtype=${DTYPE:-bfloat16}
ks=${KS:-1,2,3,4,6,8}
trees=${TREES:-2,2,1,1 4,2,1,1 8,4,2,1}
# A prefix names where the numbers came from, so a dry run never overwrites GPU results.
prefix=$([[ $device == cuda ]] && echo gpu || echo "$device")
compare_k=${COMPARE_K:-4}
size=(--repeats 3)
compare_size=(--prompts 5 --max-new-tokens 64 --repeats 3)
if [[ -n ${QUICK:-} ]]; then
    size=(--max-new-tokens 8 --num-prompts 1 --repeats 1); ks=1,2; trees=2,1; prefix=quick_$prefix
    compare_size=(--prompts 1 --max-new-tokens 8 --repeats 1); compare_k=2; : "${COMPILE:=0}"
fi
loop=(--cache static)
[[ ${COMPILE:-1} == 1 ]] && loop+=(--compile)
mkdir -p "$out"
common=(--device "$device" --dtype "$dtype" --k "$ks" "${size[@]}")

tree_flags=()
for tree in $trees; do tree_flags+=(--tree "$tree"); done

"$py" -m specdec_lib.bench --preset smollm2 "${common[@]}" "${tree_flags[@]}" \
    --out "$out/${prefix}_smollm2.json" --plot "$out/${prefix}_smollm2.png"
"$py" -m specdec_lib.bench --preset seed-gpt2 --alpha "$out/${prefix}_smollm2.json" "${common[@]}" \
    --out "$out/${prefix}_seed_gpt2.json" --plot "$out/${prefix}_seed_gpt2.png"
if [[ -z ${QUICK:-} ]]; then  # the two sweeps above, static (and compiled): about a minute of the dry run's time
    "$py" -m specdec_lib.bench --preset smollm2 "${common[@]}" "${loop[@]}" \
        --out "$out/${prefix}_smollm2_static.json" --plot "$out/${prefix}_smollm2_static.png"
    "$py" -m specdec_lib.bench --preset seed-gpt2 --alpha "$out/${prefix}_smollm2.json" "${common[@]}" "${loop[@]}" \
        --out "$out/${prefix}_seed_gpt2_static.json" --plot "$out/${prefix}_seed_gpt2_static.png"
fi
"$py" -m specdec_lib.bench compare --pair smollm2 --device "$device" --dtype "$dtype" --k "$compare_k" \
    "${compare_size[@]}" "${loop[@]}" --out "$out/${prefix}_smollm2_compare.json"
# Chapter 11: throughput against batch size (a GPU has idle arithmetic at small B; where does it run out?).
batches=${BATCHES:-1,2,4,8,16,32}
batch_size=(--prompt-set heldout --max-new-tokens 64 --repeats 3)
[[ -n ${QUICK:-} ]] && { batches=1,2; batch_size=(--num-prompts 2 --max-new-tokens 8 --repeats 1); }
"$py" -m specdec_lib.bench --preset smollm2 --device "$device" --dtype "$dtype" --batch "$batches" "${batch_size[@]}" \
    --out "$out/${prefix}_batch.json" --plot "$out/${prefix}_batch.png"
if [[ ${NOTEBOOKS:-1} == 1 ]]; then
    # -o addopts= drops pyproject's options, so that the run's own flags are the whole story.
    SPECDEC_DEVICE="$device" "$py" -m pytest -o addopts= -p no:cacheprovider --nbval-lax --nbval-current-env \
        --nbval-cell-timeout=900 notebooks ${NBVAL_ARGS:-} 2>&1 | tee "$out/${prefix}_notebooks.log"
fi
