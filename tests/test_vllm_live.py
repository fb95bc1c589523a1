"""The course's models served by vLLM itself (chapter 12): needs `make vllm` (`.venv-vllm` and build/vllm).

`make test` builds both and sets SPECDEC_REQUIRE_VLLM=1, so there a missing vLLM fails instead of skipping.
About 4 minutes on 2 cores: four vLLM runs (~30 s each to start), the course's loop, one server round trip.
"""

from __future__ import annotations

import os

import pytest
import torch

from specdec_lib.prompts import HELDOUT_PROMPTS
from specdec_lib.serving.layout import METHODS, vllm_available

pytestmark = pytest.mark.vllm

if not vllm_available():
    if os.environ.get("SPECDEC_REQUIRE_VLLM") == "1":
        raise RuntimeError("SPECDEC_REQUIRE_VLLM=1 but .venv-vllm or build/vllm is missing: run `make vllm`")
    pytest.skip("vLLM's venv is not built (`make vllm`)", allow_module_level=True)

from specdec_lib.models import load_pair  # noqa: E402
from specdec_lib.serving.client import vllm_run, vllm_serve  # noqa: E402
from specdec_lib.serving.course import course_run  # noqa: E402
from specdec_lib.testing import first_difference  # noqa: E402

# Held-out prompts the chapter does not show (the notebook's live part uses others); K and length as chapter 12.
PROMPTS = list(HELDOUT_PROMPTS[-4:])
K, MAX_TOKENS = 3, 32
NEAR_TIE = 1e-3  # float32 logits; different kernels may break a tie closer than this either way
ALPHA_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def runs() -> dict:
    """Every method through vLLM (batch 2: continuous batching on) and the course's loop on the same prompts."""
    target, _, tokenizer, _ = load_pair("smollm2", device="cpu")
    out = {"target": target, "tokenizer": tokenizer}
    for method in METHODS:
        out[method] = {"vllm": vllm_run(method, K, PROMPTS, 2, MAX_TOKENS),
                       "course": course_run(target, tokenizer, method, K, PROMPTS, MAX_TOKENS) if method != "ngram" else None}
    return out


@pytest.mark.parametrize("method", [m for m in METHODS if m != "none"])
def test_speculation_in_vllm_changes_no_token(runs, method):
    assert runs[method]["vllm"]["token_ids"] == runs["none"]["vllm"]["token_ids"]
    acceptance = runs[method]["vllm"]["acceptance"]
    assert acceptance["drafts"] > 0 and 0 <= acceptance["accepted"] <= acceptance["draft_tokens"]


def test_vllms_greedy_is_the_courses_up_to_near_ties(runs):
    ours, theirs = runs["none"]["course"]["token_ids"], runs["none"]["vllm"]["token_ids"]
    differences = []  # (prompt, position, the target's logit gap there) wherever the two greedy runs part
    for prompt, a, b in zip(PROMPTS, ours, theirs):
        a, b = torch.tensor(a), torch.tensor(b)
        if not torch.equal(a, b):
            differences.append((prompt, *first_difference(runs["target"], torch.tensor(runs["tokenizer"](prompt).input_ids), a, b)))
    assert len(differences) <= 1, differences
    assert all(gap < NEAR_TIE for _, _, gap in differences), differences


@pytest.mark.parametrize("method", ["draft", "eagle"])
def test_the_exported_drafts_accept_in_vllm_what_they_accept_in_the_course(runs, method):
    """Same draft, same K, same prompts: vLLM's α within 0.05 of the course loop's."""
    course, vllm = runs[method]["course"]["acceptance"], runs[method]["vllm"]["acceptance"]
    alpha_course = course["accepted"] / course["draft_tokens"]
    assert vllm["alpha"] == pytest.approx(alpha_course, abs=ALPHA_TOLERANCE), (course, vllm)


def test_the_server_round_trip_reports_its_counters():
    """Start vLLM's OpenAI-compatible server with the draft, one completion, /metrics, stop it by its PID."""
    served = vllm_serve("draft", K, PROMPTS[0], 16)
    assert served["exit_code"] is not None and served["usage"]["completion_tokens"] == 16
    assert served["token_ids"] is not None and len(served["token_ids"]) == 16
    assert served["acceptance"]["drafts"] > 0
