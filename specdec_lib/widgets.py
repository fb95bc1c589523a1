"""See a speculative step: coloured token views, a step viewer and a live step widget.

The HTML builders are plain functions (tests call them headlessly, and notebooks show their output
as a static twin after each widget); the widgets only wire sliders and buttons to them.
Colours follow the Okabe-Ito palette and every state also has a text decoration and a marker,
so the view does not rely on colour alone.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Sequence

import ipywidgets as widgets
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .generate import SpecOutput, StepRecord, speculative_generate

STYLE = """<style>
.sd-view{font-family:monospace;line-height:2.0;font-size:13px}
.sd-tok{padding:1px 2px;margin:0 1px;border-radius:3px;white-space:pre}
.sd-prompt{color:#555}
.sd-accepted{background:#cce3f0;border-bottom:2px solid #0072B2}
.sd-rejected{background:#fbe8c2;color:#8a5a00;text-decoration:line-through}
.sd-correction{background:#f7d3bf;border:2px solid #D55E00;font-weight:bold}
.sd-bonus{background:#c2eadb;border:2px dashed #009E73;font-weight:bold}
.sd-current{outline:1px dotted #333}
.sd-table{border-collapse:collapse;font-family:monospace;font-size:12px;margin-top:6px}
.sd-table td,.sd-table th{border:1px solid #bbb;padding:2px 8px;text-align:left}
</style>"""

# (css class, marker, label) for each token state; the marker is shown before the token.
STATES = {
    "accepted": ("sd-accepted", "", "accepted draft token (blue, underlined)"),
    "rejected": ("sd-rejected", "✗", "rejected draft token (orange, struck through, ✗)"),
    "correction": ("sd-correction", "↻", "target's correction (vermillion box, ↻)"),
    "bonus": ("sd-bonus", "★", "free bonus token (green dashed box, ★)"),
}


def visible(text: str) -> str:
    """Make whitespace visible: spaces as ·, newlines as ↵, tabs as →."""
    return text.replace(" ", "·").replace("\n", "↵").replace("\t", "→")


def token_span(tokenizer: PreTrainedTokenizerBase, token: int, state: str | None, current: bool = False) -> str:
    """One token as an HTML span with its state's class and marker."""
    css, marker, _ = STATES[state] if state else ("sd-prompt", "", "")
    classes = f"sd-tok {css}" + (" sd-current" if current else "")
    return f'<span class="{classes}" data-state="{state or "prompt"}">{marker}{html.escape(visible(tokenizer.decode([token])))}</span>'


def legend_html() -> str:
    """The colour legend shared by every view."""
    items = [f'<span class="sd-tok {css}">{marker}token</span> {label}' for css, marker, label in STATES.values()]
    return '<div class="sd-view">' + " &nbsp; ".join(items) + "</div>"


def step_spans(tokenizer: PreTrainedTokenizerBase, step: StepRecord, current: bool, show_rejected: bool) -> list[str]:
    """The spans of one step: accepted drafts, rejected drafts (optionally), then the correction or bonus."""
    spans = [token_span(tokenizer, t, "accepted", current) for t in step.draft_tokens[: step.n_accepted]]
    if show_rejected:
        spans += [token_span(tokenizer, t, "rejected", current) for t in step.draft_tokens[step.n_accepted :]]
    spans.append(token_span(tokenizer, step.next_token, "bonus" if step.bonus else "correction", current))
    return spans


def text_html(
    tokenizer: PreTrainedTokenizerBase, prompt: Sequence[int], steps: Sequence[StepRecord], upto: int | None = None
) -> str:
    """The text after steps[0..upto], coloured by state; the rejected drafts of step `upto` are shown struck through."""
    upto = len(steps) - 1 if upto is None else upto
    spans = [token_span(tokenizer, t, None) for t in prompt]
    for i, step in enumerate(steps[: upto + 1]):
        spans += step_spans(tokenizer, step, current=i == upto, show_rejected=i == upto)
    return '<div class="sd-view">' + "".join(spans) + "</div>"


def step_table_html(tokenizer: PreTrainedTokenizerBase, step: StepRecord) -> str:
    """A table of one step: each draft token, what the target made of it, and the verdict."""
    sampling = step.p_draft is not None
    head = ["pos", "draft token"] + (["p(x)", "q(x)", "accept prob min(1, p/q)"] if sampling else ["target's choice"])
    rows = []
    for i, token in enumerate(step.draft_tokens):
        word = repr(tokenizer.decode([token]))
        if i < step.n_accepted:
            verdict, choice = "accepted", word
        elif i == step.n_accepted:
            drawn = "residual draw" if sampling else "target's choice"
            verdict, choice = f"rejected → {drawn} {tokenizer.decode([step.next_token])!r}", repr(tokenizer.decode([step.next_token]))
        else:
            verdict, choice = "not checked (after a rejection)", "—"
        cells = [str(i), word]
        if sampling:
            p, q = step.p_draft[i], step.q_draft[i]
            cells += [f"{p:.3f}", f"{q:.3f}", f"{min(1.0, p / q) if q > 0 else 1.0:.3f}"]
        else:
            cells.append(choice)
        rows.append(cells + [verdict])
    if step.bonus:
        rows.append([str(len(step.draft_tokens)), "(none)"] + [""] * (len(head) - 2) + [f"bonus token {tokenizer.decode([step.next_token])!r}"])
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head + ["verdict"])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="sd-table"><tr>{header}</tr>{body}</table>'


def step_view_html(tokenizer: PreTrainedTokenizerBase, prompt: Sequence[int], steps: Sequence[StepRecord], step: int) -> str:
    """The full view of one step of a run: legend, coloured text so far, and the step's table."""
    s = steps[step]
    title = f"<b>step {step + 1} of {len(steps)}</b>: accepted {s.n_accepted} of {len(s.draft_tokens)} draft tokens"
    return STYLE + legend_html() + f"<div>{title}</div>" + text_html(tokenizer, prompt, steps, step) + step_table_html(tokenizer, s)


def run_view_html(out: SpecOutput, tokenizer: PreTrainedTokenizerBase, prompt_length: int, step: int = 0) -> str:
    """`step_view_html` for a finished run of speculative_generate: the step viewer's static twin."""
    return step_view_html(tokenizer, out.sequences[0, :prompt_length].tolist(), out.stats.steps, step)


class StepViewer(widgets.VBox):
    """A slider over the steps of a speculative run, showing each step's tokens and table."""

    def __init__(self, out: SpecOutput, tokenizer: PreTrainedTokenizerBase, prompt_length: int, step: int = 0):
        if not out.stats.steps:
            raise ValueError("this run has no steps to show (max_new_tokens=0?)")
        self.out, self.tokenizer, self.prompt_length = out, tokenizer, prompt_length
        # The slider counts steps from 1, like the view's title; `step` and `show` count from 0.
        self.slider = widgets.IntSlider(value=step + 1, min=1, max=len(out.stats.steps), description="step",
                                        continuous_update=True, layout=widgets.Layout(width="500px"))
        self.html = widgets.HTML()
        self.slider.observe(lambda change: self.show(change["new"] - 1), names="value")
        super().__init__([self.slider, self.html])
        self.show(step)

    def show(self, step: int) -> None:
        """Render step `step` into the HTML output."""
        self.html.value = run_view_html(self.out, self.tokenizer, self.prompt_length, step)


@dataclass
class LiveState:
    """What the live widget has built so far: the prompt and the steps appended to it."""

    prompt: list[int]
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def tokens(self) -> list[int]:
        """The prompt plus every token the steps appended."""
        return self.prompt + [t for s in self.steps for t in s.new_tokens]


class LiveStepper(widgets.VBox):
    """Type a prompt, pick K and a temperature, and run one speculative step per click."""

    def __init__(self, target: PreTrainedModel, draft: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 prompt: str = "Once upon a time, there was a little", k: int = 4, temperature: float = 0.0, seed: int = 0):
        self.target, self.draft, self.tokenizer, self.seed = target, draft, tokenizer, seed
        self.prompt = widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="600px"))
        self.k = widgets.IntSlider(value=k, min=1, max=8, description="K")
        self.temperature = widgets.FloatSlider(value=temperature, min=0.0, max=1.5, step=0.1, description="temperature")
        self.step_button = widgets.Button(description="speculate one step", button_style="primary")
        self.reset_button = widgets.Button(description="reset")
        self.html = widgets.HTML()
        self.step_button.on_click(lambda _: self.step())
        self.reset_button.on_click(lambda _: self.reset())
        controls = widgets.HBox([self.k, self.temperature, self.step_button, self.reset_button])
        super().__init__([self.prompt, controls, self.html])
        self.reset()

    def reset(self) -> None:
        """Start over from the prompt box's text."""
        self.state = LiveState(self.tokenizer(self.prompt.value).input_ids)
        self.generator = torch.Generator(device=self.target.device).manual_seed(self.seed)
        self.render()

    def step(self) -> StepRecord:
        """Run one speculative step with the current K and temperature, and append it."""
        k = self.k.value
        ids = torch.tensor([self.state.tokens], device=self.target.device)
        # max_new_tokens = k + 1 makes speculative_generate run exactly one full step.
        out = speculative_generate(self.target, self.draft, ids, max_new_tokens=k + 1, k=k,
                                   temperature=self.temperature.value, generator=self.generator)
        self.state.steps.append(out.stats.steps[0])
        self.render()
        return out.stats.steps[0]

    def render(self) -> None:
        """Show the text so far and, after a step, that step's table."""
        body = STYLE + legend_html() + text_html(self.tokenizer, self.state.prompt, self.state.steps)
        if self.state.steps:
            n = sum(s.n_accepted for s in self.state.steps)
            d = sum(len(s.draft_tokens) for s in self.state.steps)
            body += f"<div>{len(self.state.steps)} steps, {n}/{d} draft tokens accepted</div>"
            body += step_table_html(self.tokenizer, self.state.steps[-1])
        self.html.value = body
