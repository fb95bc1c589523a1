"""See a speculative step: coloured token views, a step viewer and a live step widget.

The HTML builders are plain functions (tests call them headlessly, and notebooks show their output
as a static twin after each widget); the widgets only wire sliders and buttons to them.
Colours follow the Okabe-Ito palette and every state also has a text decoration and a marker,
so the view does not rely on colour alone.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import ipywidgets as widgets
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..drafters.prompt_lookup import find_ngram_match, lookup_continuation
from ..loop.drafter import Drafter, as_drafter
from ..loop.generate import SpecOutput, StepRecord
from ..loop.kv_cache import ModelRunner, max_positions
from ..loop.sampling import Sampler
from ..loop.step import pick_rule, speculative_step

STYLE = """<style>
.sd-view{font-family:monospace;line-height:2.0;font-size:13px;overflow-wrap:anywhere}
.sd-tok{padding:1px 1px;margin:0;border-radius:3px;white-space:pre-wrap}
.sd-prompt{color:#555;padding:0}
.sd-target{border-bottom:2px dotted #555}
.sd-legend-item{display:inline-block;margin-right:1.5em}
.sd-accepted{background:#cce3f0;border-bottom:2px solid #0072B2}
.sd-rejected{background:#fbe8c2;color:#8a5a00;text-decoration:line-through}
.sd-correction{background:#f7d3bf;border:2px solid #D55E00;font-weight:bold}
.sd-bonus{background:#c2eadb;border:2px dashed #009E73;font-weight:bold}
.sd-current{outline:1px dotted #333}
.sd-match{background:#f5eaa0;border-bottom:2px dotted #8a7300}
.sd-suffix{background:#f5eaa0;font-weight:bold}
.sd-source{border-bottom:2px solid #0072B2}
.sd-proposal{border:2px dashed #0072B2;font-weight:bold}
.sd-table{border-collapse:collapse;font-family:monospace;font-size:12px;margin-top:6px}
.sd-table td,.sd-table th{border:1px solid #bbb;padding:2px 8px;text-align:left}
</style>"""
# JupyterLab right-aligns table cells in HTML outputs unless the cell itself says otherwise.
CELL_STYLE = 'style="text-align:left"'
# Token spans are joined with no space between them (spaces are drawn as ·), so the browser needs
# explicit break opportunities to wrap a long line.
BREAK = "<wbr>"

# (css class, marker, label) for each token state; the marker is shown before the token.
STATES = {
    "accepted": ("sd-accepted", "", "accepted draft token (blue, underlined)"),
    "rejected": ("sd-rejected", "✗", "rejected draft token (orange, struck through, ✗)"),
    "correction": ("sd-correction", "↻", "target's correction (vermillion box, ↻)"),
    "bonus": ("sd-bonus", "★", "free bonus token (green dashed box, ★)"),
    "target": ("sd-target", "", "target's own token, nothing drafted that step (dotted underline)"),
}


def visible(text: str) -> str:
    """Make whitespace visible: spaces as ·, newlines as ↵, tabs as →."""
    return text.replace(" ", "·").replace("\n", "↵").replace("\t", "→")


# The states of chapter 07's lookup view: where a prompt-lookup draft came from.
LOOKUP_STATES = {
    "suffix": ("sd-suffix", "", "the last n tokens, looked up (yellow, bold)"),
    "match": ("sd-match", "", "their earlier occurrence (yellow, dotted underline)"),
    "source": ("sd-source", "", "what followed it: copied as the draft (blue underline)"),
    "proposal": ("sd-proposal", "→", "the proposed draft tokens (dashed box, →)"),
}


def token_span(tokenizer: PreTrainedTokenizerBase, token: int, state: str | None, current: bool = False,
               states: dict[str, tuple[str, str, str]] = STATES, text: str | None = None) -> str:
    """One token as an HTML span with its state's class and marker; `text` is its text in context (default: decoded alone)."""
    css, marker, _ = states[state] if state else ("sd-prompt", "", "")
    classes = f"sd-tok {css}" + (" sd-current" if current else "")
    text = tokenizer.decode([token]) if text is None else text
    return f'<span class="{classes}" data-state="{state or "prompt"}">{marker}{html.escape(visible(text))}</span>'


def token_texts(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[int]) -> list[str]:
    """Each token's text in context: a character whose UTF-8 bytes span several tokens shows on the token that completes it.

    Decoding tokens one at a time turns such a character (Japanese, emoji) into "\ufffd" pieces; this
    decodes the text incrementally, as a streaming detokenizer does, so the pieces join up.
    """
    texts, start = [], 0  # start: the first token of a character not complete yet
    for i in range(len(tokens)):
        lo = max(0, start - 4)  # a few tokens of context: some tokenizers decode a token differently after others
        before, now = tokenizer.decode(list(tokens[lo:start])), tokenizer.decode(list(tokens[lo : i + 1]))
        if now.endswith("\ufffd") and i + 1 < len(tokens):
            texts.append("")  # its bytes so far are part of a character: show it on the token that completes it
            continue
        texts.append(now[len(before):] if now.startswith(before) else tokenizer.decode(list(tokens[start : i + 1])))
        start = i + 1
    return texts


def legend_html(states: dict[str, tuple[str, str, str]] = STATES) -> str:
    """The colour legend of a view's states."""
    items = [f'<span class="sd-legend-item"><span class="sd-tok {css}">{marker}token</span> {label}</span>'
             for css, marker, label in states.values()]
    return '<div class="sd-view">' + " ".join(items) + "</div>"


def next_token_state(step: StepRecord) -> str:
    """How a step's last token came about: a correction, the bonus, or the target's own (no drafts)."""
    if not step.draft_tokens:
        return "target"
    return "bonus" if step.bonus else "correction"


def step_spans(tokenizer: PreTrainedTokenizerBase, step: StepRecord, current: bool, show_rejected: bool,
               texts: Iterator[str] | None = None) -> list[str]:
    """The spans of one step: accepted drafts (a tree's accepted path), rejected drafts (optionally), then the correction or bonus.

    `texts` yields the committed tokens' texts in context (`token_texts`); rejected drafts are decoded alone.
    """
    text = (lambda: next(texts)) if texts is not None else (lambda: None)
    spans = [token_span(tokenizer, t, "accepted", current, text=text()) for t in step.accepted_tokens]
    if show_rejected:  # every drafted token off the accepted path, in drafting order
        rejected = [t for i, t in enumerate(step.draft_tokens) if i not in step.path]
        spans += [token_span(tokenizer, t, "rejected", current) for t in rejected]
    spans.append(token_span(tokenizer, step.next_token, next_token_state(step), current, text=text()))
    return spans


def text_html(
    tokenizer: PreTrainedTokenizerBase, prompt: Sequence[int], steps: Sequence[StepRecord], upto: int | None = None,
    window: int | None = None,
) -> str:
    """The text after steps[0..upto], coloured by state; the rejected drafts of step `upto` are shown struck through.

    With `window`, only the prompt's last `window` tokens are drawn (a long prompt would make every redraw slow).
    """
    upto = len(steps) - 1 if upto is None else upto
    hidden = max(0, len(prompt) - window) if window is not None else 0
    shown = list(prompt[hidden:])
    committed = shown + [t for step in steps[: upto + 1] for t in step.new_tokens]
    texts = iter(token_texts(tokenizer, committed))
    spans = [f'<span class="sd-tok sd-prompt">… {hidden:,} earlier prompt tokens …</span>'] if hidden else []
    spans += [token_span(tokenizer, t, None, text=next(texts)) for t in shown]
    for i, step in enumerate(steps[: upto + 1]):
        spans += step_spans(tokenizer, step, current=i == upto, show_rejected=i == upto, texts=texts)
    return '<div class="sd-view">' + BREAK.join(spans) + "</div>"


def step_title(step: StepRecord) -> str:
    """One line saying what a step did."""
    if not step.draft_tokens:
        # Why is not in the record: a lookup with no match, an EAGLE head's first step, or no room left in the run.
        return "nothing drafted this step: the target's own token, as in plain decoding"
    end = "the bonus token" if step.bonus else "the target's correction"
    if not step.tree.is_chain:
        return (f"accepted a path of {step.n_accepted} of a {len(step.draft_tokens)}-node tree "
                f"(depth {step.depth}), then {end}")
    return f"accepted {step.n_accepted} of {len(step.draft_tokens)} draft tokens, then {end}"


def tree_table_html(tokenizer: PreTrainedTokenizerBase, step: StepRecord) -> str:
    """A table of one tree step (chapter 09): each node, its parent and depth, and whether it lies on the accepted path."""
    head = ["node", "parent", "depth", "draft token", "verdict"]
    rows = []
    for i, token in enumerate(step.draft_tokens):
        parent = step.tree.parents[i]
        if i in step.path:
            verdict = "accepted (on the path)"
        elif parent < 0 or parent in step.path:
            verdict = "rejected (not the target's choice after its parent)"
        else:
            verdict = "not checked (its parent was rejected)"
        rows.append([str(i), "root" if parent < 0 else str(parent), str(step.tree.depths[i]), repr(tokenizer.decode([token])), verdict])
    label = "bonus token" if step.bonus else "target's correction"
    rows.append(["", "", str(step.n_accepted + 1), "(none)", f"{label} {tokenizer.decode([step.next_token])!r}"])
    header = "".join(f"<th {CELL_STYLE}>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td {CELL_STYLE}>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="sd-table"><tr>{header}</tr>{body}</table>'


def step_table_html(tokenizer: PreTrainedTokenizerBase, step: StepRecord) -> str:
    """A table of one step: each draft token, what the target made of it, and the verdict."""
    if step.tree is not None and not step.tree.is_chain:
        return tree_table_html(tokenizer, step)
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
    if step.bonus or not step.draft_tokens:
        label = "bonus token" if step.bonus else "target's own token"
        rows.append([str(len(step.draft_tokens)), "(none)"] + [""] * (len(head) - 2)
                    + [f"{label} {tokenizer.decode([step.next_token])!r}"])
    header = "".join(f"<th {CELL_STYLE}>{html.escape(h)}</th>" for h in head + ["verdict"])
    body = "".join("<tr>" + "".join(f"<td {CELL_STYLE}>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="sd-table"><tr>{header}</tr>{body}</table>'


def step_view_html(tokenizer: PreTrainedTokenizerBase, prompt: Sequence[int], steps: Sequence[StepRecord], step: int) -> str:
    """The full view of one step of a run: legend, coloured text so far, and the step's table."""
    s = steps[step]
    title = f"<b>step {step + 1} of {len(steps)}</b>: {step_title(s)}"
    return STYLE + legend_html() + f"<div>{title}</div>" + text_html(tokenizer, prompt, steps, step) + step_table_html(tokenizer, s)


def run_view_html(out: SpecOutput, tokenizer: PreTrainedTokenizerBase, prompt_length: int, step: int = 0) -> str:
    """`step_view_html` for a finished run of speculative_generate: the step viewer's static twin."""
    return step_view_html(tokenizer, out.sequences[0, :prompt_length].tolist(), out.stats.steps, step)


def lookup_view_html(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[int], k: int,
                     max_ngram_size: int = 3, min_ngram_size: int = 1) -> str:
    """Where a prompt-lookup draft comes from: the looked-up suffix, its earlier match, the copied tokens, the draft."""
    ids = torch.tensor(list(tokens))
    match = find_ngram_match(ids, max_ngram_size, min_ngram_size)
    state = [None] * len(tokens)
    if match is not None:
        start, n = match
        for i in range(start + n, min(start + n + k, len(tokens))):
            state[i] = "source"
        for i in range(start, start + n):
            state[i] = "match"
        for i in range(len(tokens) - n, len(tokens)):
            state[i] = "suffix"
    proposal = lookup_continuation(ids, k, max_ngram_size, min_ngram_size).tolist()
    spans = [token_span(tokenizer, t, st, states=LOOKUP_STATES) for t, st in zip(tokens, state)]
    spans += [token_span(tokenizer, t, "proposal", states=LOOKUP_STATES) for t in proposal]
    if match is None:
        title = f"no n-gram of {min_ngram_size}..{max_ngram_size} final tokens occurs earlier: nothing to propose"
    else:
        title = (f"the last {match[1]} token(s) occurred earlier at position {match[0]}: "
                 f"propose the {len(proposal)} that followed")
    return (STYLE + legend_html(LOOKUP_STATES) + f"<div>{html.escape(title)}</div>"
            + '<div class="sd-view">' + BREAK.join(spans) + "</div>")


def error_html(err: Exception) -> str:
    """One red line saying what went wrong, to show inside a widget."""
    message = html.escape(f"{type(err).__name__}: {err}")
    return f'<div style="color:#B00020;font-family:monospace;white-space:pre-wrap">⚠ {message}</div>'


def guarded(error: widgets.HTML, handler: Callable[..., object]) -> Callable[..., None]:
    """A widget callback running `handler` that shows any exception as a red line in `error`, and clears it on success.

    JupyterLab sends exceptions raised in widget callbacks to its log console, where a learner never
    looks: without this, a bad input looks like a button that does nothing.
    """

    def callback(*args: object) -> None:
        try:
            handler(*args)
        except Exception as err:  # any error: the learner must see it, and the widget must stay usable
            error.value = error_html(err)
        else:
            error.value = ""

    return callback


class StepViewer(widgets.VBox):
    """A slider over the steps of a speculative run, showing each step's tokens and table."""

    def __init__(self, out: SpecOutput, tokenizer: PreTrainedTokenizerBase, prompt_length: int, step: int = 0):
        if not out.stats.steps:
            raise ValueError("this run has no steps to show (max_new_tokens=0?)")
        self.out, self.tokenizer, self.prompt_length = out, tokenizer, prompt_length
        # The slider counts steps from 1, like the view's title; `step` and `show` count from 0.
        self.slider = widgets.IntSlider(value=step + 1, min=1, max=len(out.stats.steps), description="step",
                                        continuous_update=True, layout=widgets.Layout(width="500px"))
        self.html, self.error = widgets.HTML(), widgets.HTML()
        self.slider.observe(guarded(self.error, lambda change: self.show(change["new"] - 1)), names="value")
        super().__init__([self.slider, self.error, self.html])
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

    WINDOW = 256  # prompt tokens drawn: a long prompt is shown by its end, so a click redraws little

    def __init__(self, target: PreTrainedModel, draft: PreTrainedModel | Drafter, tokenizer: PreTrainedTokenizerBase,
                 prompt: str = "Once upon a time, there was a little", k: int = 4, temperature: float = 0.0, seed: int = 0):
        self.target, self.draft, self.tokenizer, self.seed = target, draft, tokenizer, seed
        # A text area keeps a multi-line prompt's lines (a one-line box would flatten them).
        self.prompt = widgets.Textarea(value=prompt, description="prompt", rows=min(8, prompt.count("\n") + 2),
                                       layout=widgets.Layout(width="600px"))
        wide = {"description_width": "initial"}  # show whole labels, never "temperat…"
        self.k = widgets.IntSlider(value=k, min=1, max=8, description="K", style=wide)
        self.temperature = widgets.FloatSlider(value=temperature, min=0.0, max=1.5, step=0.1,
                                               description="temperature", style=wide)
        self.step_button = widgets.Button(description="speculate one step", button_style="primary")
        self.reset_button = widgets.Button(description="reset")
        self.html, self.error, self.note = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.step_button.on_click(guarded(self.error, lambda _: self.step()))
        self.reset_button.on_click(guarded(self.error, lambda _: self.reset()))
        self.prompt.observe(lambda _: self.show_note(), names="value")
        controls = widgets.HBox([self.k, self.temperature, self.step_button, self.reset_button])
        super().__init__([self.prompt, controls, self.note, self.error, self.html])
        self.reset()

    def show_note(self) -> None:
        """Say, under the controls, that an edited prompt starts over at the next step."""
        edited = self.prompt.value != self.started_from
        self.note.value = "<i>new prompt: the next step (or reset) starts over from it</i>" if edited else ""

    def reset(self) -> None:
        """Start over from the prompt box's text, with empty caches."""
        ids = self.tokenizer(self.prompt.value).input_ids
        if not ids:
            raise ValueError("the prompt box is empty: type a prompt, then press reset")
        limit = max_positions(self.target)
        if limit is not None and len(ids) >= limit:
            raise ValueError(f"the prompt is {len(ids):,} tokens, and the model reads at most {limit:,}: "
                             "shorten it to leave room for new tokens")
        self.state, self.started_from = LiveState(ids), self.prompt.value
        self.generator = torch.Generator(device=self.target.device).manual_seed(self.seed)
        self.seq = torch.tensor([ids], device=self.target.device)
        # The same runner and drafter serve every click, so each step feeds only what is new (the loop's caches).
        self.runner, self.drafter = ModelRunner(self.target), as_drafter(self.draft)
        self.drafter.start(self.target, self.seq)
        self.show_note()
        self.render()

    def step(self) -> StepRecord:
        """Run one speculative step (`speculative_step`) with the current K and temperature, and append it.

        An edited prompt takes effect here: the run starts over from it first.
        """
        if self.prompt.value != self.started_from:
            self.reset()
        k, limit = self.k.value, max_positions(self.target)
        if limit is not None and self.seq.shape[1] + k + 1 > limit:
            room = limit - self.seq.shape[1]  # new positions left
            raise ValueError(f"the text is {self.seq.shape[1]:,} tokens and the model reads at most {limit:,}: "
                             + (f"lower K to {room - 1} or less" if room > 1 else "no room for another step")
                             + ", or press reset")
        sampler = Sampler(self.temperature.value, generator=self.generator)
        record, self.seq = speculative_step(self.runner, self.drafter, self.seq, pick_rule("auto", sampler), sampler, k=k)
        self.state.steps.append(record)
        self.render()
        return record

    def render(self) -> None:
        """Show the text so far (a long prompt by its last WINDOW tokens) and, after a step, that step's table."""
        body = STYLE + legend_html() + text_html(self.tokenizer, self.state.prompt, self.state.steps, window=self.WINDOW)
        if self.state.steps:
            n = sum(s.n_accepted for s in self.state.steps)
            d = sum(len(s.draft_tokens) for s in self.state.steps)
            steps = len(self.state.steps)
            body += f"<div>{steps} step{'s' * (steps != 1)}, {n}/{d} draft tokens accepted</div>"
            body += step_table_html(self.tokenizer, self.state.steps[-1])
        self.html.value = body
