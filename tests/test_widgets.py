"""Widgets and plots, headless: build without displaying, move sliders, click buttons, inspect the HTML."""

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets
import pytest
import torch

from conftest import cached_pair
from specdec_lib import speculative_generate
from specdec_lib.loop.generate import StepRecord
from specdec_lib.viz.plots import plot_accepted_histogram, plot_acceptance_per_position
from specdec_lib.testing import ToyTokenizer
from specdec_lib.viz.widgets import LiveStepper, StepViewer, run_view_html, step_table_html, step_view_html, text_html

TOK = ToyTokenizer()
PROMPT = torch.tensor([[8, 5, 12, 12, 15]])  # "hello"


@pytest.fixture(scope="module")
def run():
    target, draft = cached_pair("gpt2", "medium")
    return speculative_generate(target, draft, PROMPT, max_new_tokens=30, k=4)


def states(html: str, state: str) -> int:
    """How many token spans of a state the HTML holds."""
    return html.count(f'data-state="{state}"')


def test_step_html_colours_each_state():
    step = StepRecord(draft_tokens=[1, 2, 3, 4], n_accepted=2, next_token=9)
    html = text_html(TOK, [8, 5], [step])
    assert states(html, "prompt") == 2 and states(html, "accepted") == 2
    assert states(html, "rejected") == 2 and states(html, "correction") == 1 and states(html, "bonus") == 0
    assert "✗" in html and "↻" in html  # markers, not colour alone
    bonus = text_html(TOK, [8], [StepRecord([1, 2], 2, 3)])
    assert states(bonus, "bonus") == 1 and "★" in bonus and states(bonus, "rejected") == 0


def test_a_step_without_drafts_shows_the_targets_own_token_not_a_bonus():
    step = StepRecord(draft_tokens=[], n_accepted=0, next_token=9)
    assert not step.bonus
    html = text_html(TOK, [8], [step])
    assert states(html, "target") == 1 and states(html, "bonus") == 0 and states(html, "correction") == 0
    table = step_table_html(TOK, step)
    assert "own token" in table and "bonus" not in table
    assert "nothing drafted" in step_view_html(TOK, [8], [step], 0)
    assert "0 of 0" not in step_view_html(TOK, [8], [step], 0)
    assert "last token" not in step_view_html(TOK, [8], [step], 0)  # not only at a run's end: lookups with no match too


def test_long_text_and_legend_can_wrap():
    """Spans are joined without spaces, so the view needs explicit break points; the legend items too."""
    steps = [StepRecord([1, 2, 3], 1, 4) for _ in range(40)]
    html = step_view_html(TOK, list(range(1, 30)), steps, 39)
    view = html.split('<div class="sd-view">')[2]  # after the legend: the text
    assert view.count("<wbr>") == view.count('class="sd-tok') - 1
    assert "nowrap" not in html and "white-space:pre}" not in html and "&nbsp;" not in html
    assert html.count('class="sd-legend-item"') == 5


def test_table_cells_are_left_aligned_inline():
    """JupyterLab right-aligns output table cells unless each cell says otherwise."""
    table = step_table_html(TOK, StepRecord([1, 2], 1, 3))
    assert table.count("<td ") == table.count('<td style="text-align:left"')


def test_whitespace_is_visible():
    html = text_html(TOK, [0, 8, TOK.alphabet.index("\n")], [])  # space, "h", newline
    assert "·" in html and "↵" in html


def test_only_the_current_step_shows_its_rejected_drafts():
    steps = [StepRecord([1, 2], 0, 5), StepRecord([3, 4], 1, 6)]
    assert states(text_html(TOK, [8], steps, upto=1), "rejected") == 1
    assert states(text_html(TOK, [8], steps, upto=0), "rejected") == 2


def test_table_shows_verdicts_and_sampling_columns():
    greedy = step_table_html(TOK, StepRecord([1, 2, 3], 1, 7))
    assert "accepted" in greedy and "rejected" in greedy and "not checked" in greedy and "p(x)" not in greedy
    sampled = step_table_html(TOK, StepRecord([1, 2], 2, 7, p_draft=[0.5, 0.2], q_draft=[0.25, 0.4]))
    assert "p(x)" in sampled and "0.500" in sampled and "bonus token" in sampled
    assert "1.000" in sampled and "0.500" in sampled  # min(1, 0.5/0.25) and min(1, 0.2/0.4)


def test_step_viewer_slider_shows_the_chosen_step(run):
    viewer = StepViewer(run, TOK, PROMPT.shape[1])
    assert (viewer.slider.min, viewer.slider.max) == (1, len(run.stats.steps))
    for i in (0, len(run.stats.steps) - 1, 2):
        viewer.slider.value = i + 1  # the slider counts from 1
        step = run.stats.steps[i]
        assert f"step {i + 1} of {len(run.stats.steps)}" in viewer.html.value
        assert states(viewer.html.value, "rejected") == len(step.draft_tokens) - step.n_accepted
    assert viewer.html.value == run_view_html(run, TOK, PROMPT.shape[1], 2)  # the static twin is the same view


def test_step_viewer_text_matches_the_output(run):
    last = run_view_html(run, TOK, PROMPT.shape[1], len(run.stats.steps) - 1)
    shown = sum(states(last, s) for s in ("prompt", "accepted", "correction", "bonus", "target"))
    assert shown == run.sequences.shape[1]


def test_live_stepper_appends_one_step_per_click():
    target, draft = cached_pair("gpt2", "perfect")
    live = LiveStepper(target, draft, TOK, prompt="hello", k=3)
    live.step_button.click()
    assert len(live.state.steps) == 1 and len(live.state.tokens) == 5 + 4  # perfect draft: k + bonus
    assert "1 step," in live.html.value and "1 steps" not in live.html.value
    assert live.temperature.style.description_width == "initial"  # the whole label shows
    live.k.value = 2
    live.step_button.click()
    assert len(live.state.tokens) == 5 + 4 + 3
    assert states(live.html.value, "bonus") == 2
    ref = speculative_generate(target, draft, torch.tensor([live.state.prompt]), max_new_tokens=7, k=8)
    assert live.state.tokens == ref.sequences[0].tolist()  # steps chain into the target's own greedy text
    live.reset_button.click()
    assert live.state.steps == [] and states(live.html.value, "accepted") == 0


def test_live_stepper_samples_reproducibly():
    target, draft = cached_pair("gpt2", "medium")
    texts = []
    for _ in range(2):
        live = LiveStepper(target, draft, TOK, prompt="hello", k=3, temperature=1.0, seed=3)
        for _ in range(3):
            live.step_button.click()
        texts.append(live.state.tokens)
    assert texts[0] == texts[1]
    assert live.state.steps[0].p_draft is not None and "q(x)" in live.html.value


def test_per_position_plot_has_k_bars_and_theory_line(run):
    fig = plot_acceptance_per_position(run.stats)
    ax = fig.axes[0]
    assert len(ax.patches) == 4 and len(ax.lines) == 1
    heights = [p.get_height() for p in ax.patches]
    assert heights == sorted(heights, reverse=True)  # accepting position i needs all before it


def test_histogram_has_k_plus_one_bars(run):
    ax = plot_accepted_histogram([run.stats, run.stats]).axes[0]
    assert len(ax.patches) == 5 and len(ax.lines) == 1
    assert sum(p.get_height() for p in ax.patches) == pytest.approx(1.0)


def test_live_stepper_shows_errors_inside_and_stays_usable():
    """Bad input in a click handler: a red line in the widget, no exception lost in a log, and the next click works."""
    target, draft = cached_pair("gpt2", "perfect")
    live = LiveStepper(target, draft, TOK, prompt="hello", k=3)
    live.prompt.value = ""
    live.reset_button.click()  # an empty prompt: refused, the old text stays
    assert "prompt box is empty" in live.error.value and "#B00020" in live.error.value
    assert live.state.prompt == TOK("hello").input_ids
    live.prompt.value = "ab" * 200  # longer than the tiny model's 256 positions
    live.reset_button.click()
    assert "the prompt is 400 tokens, and the model reads at most 256" in live.error.value
    live.step_button.click()  # the edited prompt takes effect on a step: refused the same way, in the learner's terms
    assert "ValueError" in live.error.value and "at most 256" in live.error.value
    assert "max_new_tokens" not in live.error.value
    assert live.state.steps == []
    live.prompt.value = "hello"
    live.reset_button.click()
    live.step_button.click()  # valid input again: it works, and the error line is cleared
    assert live.error.value == "" and len(live.state.steps) == 1


def test_step_viewer_shows_a_failing_render_inside(run, monkeypatch):
    viewer = StepViewer(run, TOK, PROMPT.shape[1])
    monkeypatch.setattr(viewer, "show", lambda step: (_ for _ in ()).throw(RuntimeError("boom")))
    viewer.slider.value = 2
    assert "RuntimeError: boom" in viewer.error.value


def test_lookup_view_marks_where_the_draft_comes_from():
    from specdec_lib.viz.widgets import lookup_view_html

    html = lookup_view_html(TOK, [5, 6, 7, 8, 5, 6], k=3)  # "ef" occurred at the start, followed by "gh"
    assert states(html, "suffix") == 2 and states(html, "match") == 2
    assert states(html, "source") == 2  # "g", "h": the rest of the copy is the suffix itself
    assert states(html, "proposal") == 3 and "→" in html
    assert "position 0" in html
    none = lookup_view_html(TOK, [1, 2, 3], k=3)
    assert states(none, "proposal") == 0 and "nothing to propose" in none


def spans(html: str) -> list[tuple[str, str]]:
    """Every token span of a view, in order, as (state, shown text without its marker)."""
    import re

    found = re.findall(r'data-state="([a-z]+)">(.*?)</span>', html)
    return [(state, text.lstrip("✗↻★")) for state, text in found]


def shown(token: int) -> str:
    """A token as the view writes it: decoded alone, whitespace made visible, HTML-escaped."""
    import html

    from specdec_lib.viz.widgets import visible

    return html.escape(visible(TOK.decode([token])))


@pytest.fixture(scope="module")
def tree_run():
    target, draft = cached_pair("llama", "medium")
    return speculative_generate(target, draft, PROMPT, max_new_tokens=30, tree=(3, 2, 1))


def test_tree_step_viewer_shows_the_accepted_path_token_by_token(tree_run):
    """A tree step's accepted tokens are its path's nodes, not its first nodes; every other node is shown as rejected."""
    steps = tree_run.stats.steps
    off_path = [i for i, s in enumerate(steps) if s.accepted_tokens != s.draft_tokens[: s.n_accepted]]
    assert off_path, "no step accepted a node off the first branch: the test would not tell the two apart"
    for i in off_path[:3] + [0, len(steps) - 1]:
        step = steps[i]
        view = spans(step_view_html(TOK, PROMPT[0].tolist(), steps, i).split("<table")[0].split('<div class="sd-view">')[2])
        current = view[len(view) - len(step.accepted_tokens) - (len(step.draft_tokens) - step.n_accepted) - 1:]
        expected = ([("accepted", shown(t)) for t in step.accepted_tokens]
                    + [("rejected", shown(t)) for j, t in enumerate(step.draft_tokens) if j not in step.path]
                    + [("bonus" if step.bonus else "correction", shown(step.next_token))])
        assert current == expected, f"step {i + 1}"
    last = run_view_html(tree_run, TOK, PROMPT.shape[1], len(steps) - 1).split("<table")[0]
    text = [t for s, t in spans(last.split('<div class="sd-view">')[2]) if s != "rejected"]
    assert text == [shown(t) for t in tree_run.sequences[0].tolist()]  # the view's text is the run's output


def test_tree_step_table_marks_path_nodes(tree_run):
    step = next(s for s in tree_run.stats.steps if s.accepted_tokens != s.draft_tokens[: s.n_accepted])
    table = step_table_html(TOK, step)
    assert table.count("accepted (on the path)") == len(step.path) and "parent" in table
    assert table.count("<tr>") == len(step.draft_tokens) + 2  # header, one row per node, the next token
    assert "tree" in step_view_html(TOK, [8], [step], 0)


def test_live_stepper_steps_are_the_loops_steps_when_sampling():
    """The stepper drives speculative_step with one runner and drafter: the same draws as one speculative_generate run."""
    target, draft = cached_pair("gpt2", "medium")
    live = LiveStepper(target, draft, TOK, prompt="hello", k=3, temperature=1.0, seed=5)
    for _ in range(4):
        live.step_button.click()
    gen = torch.Generator().manual_seed(5)
    new = len(live.state.tokens) - 5
    ref = speculative_generate(target, draft, torch.tensor([live.state.prompt]), max_new_tokens=new + 10, k=3,
                               temperature=1.0, generator=gen)
    assert [s.new_tokens for s in ref.stats.steps[:4]] == [s.new_tokens for s in live.state.steps]


def test_live_stepper_takes_a_new_prompt_on_the_next_step_and_keeps_its_lines():
    target, draft = cached_pair("gpt2", "perfect")
    live = LiveStepper(target, draft, TOK, prompt="hello\nworld", k=2)
    assert isinstance(live.prompt, widgets.Textarea)  # a one-line box would flatten the lines in the browser
    assert live.state.prompt == TOK("hello\nworld").input_ids and len(live.state.prompt) == 11
    live.step_button.click()
    live.prompt.value = "abc"
    assert "new prompt" in live.note.value  # says so before the click, instead of ignoring it
    live.step_button.click()
    assert live.state.prompt == TOK("abc").input_ids and len(live.state.steps) == 1
    assert live.note.value == ""


def test_live_stepper_draws_a_long_prompt_by_its_end():
    target, draft = cached_pair("gpt2", "perfect")
    live = LiveStepper(target, draft, TOK, prompt="abcdefghij" * 10, k=2)
    live.WINDOW = 20
    live.step_button.click()
    assert states(live.html.value, "prompt") == 20 and "80 earlier prompt tokens" in live.html.value
    assert "earlier prompt tokens" not in text_html(TOK, live.state.prompt, live.state.steps)  # views of whole runs


def test_step_limit_error_speaks_of_k():
    target, draft = cached_pair("gpt2", "perfect")
    live = LiveStepper(target, draft, TOK, prompt="ab" * 126, k=8)  # 252 of 256 positions
    live.step_button.click()
    assert "lower K to 3 or less" in live.error.value and "max_new_tokens" not in live.error.value


class ByteTokenizer:
    """Token i is byte i: a character of 3 UTF-8 bytes is 3 tokens, as in byte-level BPE vocabularies."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_token_texts_join_a_character_split_across_tokens():
    from specdec_lib.viz.widgets import token_texts

    tokens = list("日本 ok".encode())
    texts = token_texts(ByteTokenizer(), tokens)
    assert len(texts) == len(tokens) and "".join(texts) == "日本 ok" and "\ufffd" not in "".join(texts)
    assert texts[:3] == ["", "", "日"]  # the character shows on the token that completes it
    assert [ByteTokenizer().decode([t]) for t in tokens[:3]] == ["\ufffd"] * 3  # one at a time: what the view showed
    cut = token_texts(ByteTokenizer(), tokens[:2])  # a text that ends inside a character says so
    assert "".join(cut) == "\ufffd"
