"""The benchmark command line and the plots, headless (Agg), on the tiny random pair."""

import json

import matplotlib

matplotlib.use("Agg")

import pytest

from specdec_lib.cli.bench import main
from specdec_lib.bench.report import format_report
from specdec_lib.prompts import DEFAULT_PROMPTS, load_prompts
from specdec_lib.viz.plots import plot_k_sweep, plot_speedup_heatmap
from specdec_lib.bench.theory import expected_speedup
from specdec_lib.models.cpu_kernels import CANDIDATES


def test_cli_writes_json_and_plot(tmp_path, capsys):
    out, plot = tmp_path / "r.json", tmp_path / "r.png"
    report = main(["--preset", "tiny-gpt2", "--k", "1,3", "--max-new-tokens", "8", "--num-prompts", "2",
                   "--repeats", "1", "--out", str(out), "--plot", str(plot)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    assert [r["k"] for r in saved["runs"]] == [1, 3]
    for r in saved["runs"]:
        assert r["new_tokens"] == 16 and r["outputs_match_target"] is True
        assert r["tokens_per_s"] > 0 and 0 <= r["alpha"] <= 1 and r["c"] > 0
        assert r["predicted_speedup"] == pytest.approx(expected_speedup(r["alpha"], r["k"], r["c"]))
    assert saved["best_k_measured"] in (1, 3) and len(saved["prompts"]) == 2
    assert saved["cpu_kernel_choices"] and all(set(rows.values()) <= set(CANDIDATES) for rows in saved["cpu_kernel_choices"].values())
    assert plot.stat().st_size > 10_000
    again = tmp_path / "again.png"  # a committed report drawn again, with no model run
    assert main(["replot", str(out), str(again)]) == saved and again.stat().st_size > 10_000
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps({"batch_sizes": [1, 2]}))
    with pytest.raises(SystemExit, match="not a K-sweep report"):
        main(["replot", str(batch), str(again)])
    printed = capsys.readouterr().out
    assert "meas/pred" in printed and format_report(saved) in printed
    assert f"best k measured {saved['best_k_measured']}" in format_report(saved)


@pytest.mark.parametrize("bad", ["0,2", "a,b", ""])
def test_cli_rejects_bad_k(bad):
    with pytest.raises(SystemExit):
        main(["--preset", "tiny-gpt2", "--k", bad])


def test_load_prompts(tmp_path):
    assert load_prompts(None) == list(DEFAULT_PROMPTS)
    (tmp_path / "p.json").write_text(json.dumps(["a\nb", "c"]))
    assert load_prompts(str(tmp_path / "p.json")) == ["a\nb", "c"]
    (tmp_path / "p.txt").write_text("first\\nline\n\nsecond\n")
    assert load_prompts(str(tmp_path / "p.txt")) == ["first\nline", "second"]
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="non-empty"):
        load_prompts(str(tmp_path / "bad.json"))


def test_k_sweep_plot_has_curves_and_points():
    runs = [{"k": k, "speedup": 1.0 + k / 10, "tokens_per_target_call": 1 + k / 2} for k in (1, 2, 4)]
    fig = plot_k_sweep(runs, alpha=0.7, c=0.1)
    left, right = fig.axes[:2]
    assert len(left.lines) == 3  # predicted curve, measured points, the 1.0 line
    assert list(left.lines[1].get_xdata()) == [1, 2, 4]
    assert len(right.lines) == 2


def test_k_sweep_plot_wraps_a_long_title_instead_of_cutting_it():
    runs = [{"k": k, "speedup": 1.0, "tokens_per_target_call": 1.5} for k in (1, 2)]
    title = "SmolLM2-135M-Instruct (Q4_1 GGUF) + its EAGLE head (2 layers, 576 wide, 8192 of 49152 token ids " \
            "+ the target's features) (Intel(R) Xeon(R) Processor, 2 cores)\nstatic cache, compiled"
    fig = plot_k_sweep(runs, alpha=0.7, c=0.1, title=title)
    shown = fig._suptitle.get_text()
    assert shown.split() == title.split()  # every word kept
    assert max(len(line) for line in shown.splitlines()) <= 110 and len(shown.splitlines()) == 3
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width  # inside the figure


def test_heatmap_marks_points():
    fig = plot_speedup_heatmap(4, {"stand-in": (0.8, 0.6), "trained": (0.5, 0.1)})
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["stand-in", "trained"]


def test_heatmap_legend_covers_no_data_and_edge_points_are_whole():
    """Chapter 08's map: the legend once hid a contour label, and a stand-in at α 0.98 was cut in half."""
    fig = plot_speedup_heatmap(3, {"a draft": (0.4, 0.1), "stand-in bf16": (0.983, 0.655)}, c_max=0.8)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert not legend.overlaps(axes)
    assert legend.y0 >= 0 and legend.x0 >= 0 and legend.x1 <= fig.bbox.width  # inside the figure
    assert not any(line.get_clip_on() for line in ax.lines)


def test_data_scaling_plot_shows_held_out_and_held_aside_per_draft():
    """Chapter 08's curve: one line per draft step and set, references named, the legend clear of the axes."""
    from specdec_lib.viz.plots import plot_data_scaling

    runs = [{"generated": n, "heldout": [0.40 + d, 0.32 + d], "held_aside": [0.32 + d, 0.27 + d]}
            for n, d in ((150_000, 0.0), (600_000, 0.01), (2_000_000, 0.02))]
    fig = plot_data_scaling(runs, {"EAGLE-1, 1st draft": 0.443})
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["draft 1: held-out prompts", "draft 1: rows held aside from its corpus",
                      "draft 2: held-out prompts", "draft 2: rows held aside from its corpus",
                      "EAGLE-1, 1st draft, held-out (0.44)"]
    assert list(ax.lines[1].get_ydata()) == [0.32, 0.33, 0.34]
    assert not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent())
    assert ax.get_ylim() == pytest.approx((0.1, 0.6))  # zoomed to the data, in tenths
    without = plot_data_scaling([{k: v for k, v in r.items() if k != "held_aside"} for r in runs])
    assert len(without.axes[0].lines) == 2  # older runs without held-aside rows: held-out lines only


def test_compare_cli_runs_all_four_methods(capsys):
    from specdec_lib.cli.bench import compare

    result = compare(["--pair", "tiny-gpt2", "--k", "2", "--max-new-tokens", "8", "--repeats", "1"])
    assert result.outputs_agree and len(result.methods) == 4
    assert "ours / HF assisted generation" in capsys.readouterr().out


@pytest.mark.compile
def test_compare_cli_adds_static_and_compiled_loops(tmp_path, capsys):
    from specdec_lib.cli.bench import compare

    out = tmp_path / "c.json"
    result = compare(["--pair", "tiny-gpt2", "--k", "2", "--max-new-tokens", "8", "--repeats", "1",
                      "--cache", "static", "--compile", "--out", str(out)])
    assert result.outputs_agree and len(result.methods) == 8
    saved = json.loads(out.read_text())
    static_compiled = "speculative (static cache, compiled)"
    assert {"target only (static cache)", "speculative (static cache)", static_compiled} <= set(saved["methods"])
    assert all(m["outputs_match_target"] for m in saved["methods"].values())
    assert saved["loops"][static_compiled]["vs_its_target_only"] == pytest.approx(
        result.ratio(static_compiled, "target only (static cache, compiled)"))
    assert f"{static_compiled} vs HF assisted generation" in capsys.readouterr().out


def test_cli_sweeps_the_static_loop(tmp_path):
    """Eager here; compiling goes through the same benchmark() settings, which the compare test above compiles."""
    out = tmp_path / "s.json"
    main(["--preset", "tiny-gpt2", "--k", "1,3", "--max-new-tokens", "8", "--num-prompts", "2",
          "--repeats", "1", "--cache", "static", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["cache_implementation"] == "static" and saved["compile"] is False
    assert all(r["outputs_match_target"] and r["new_tokens"] == 16 for r in saved["runs"])


@pytest.mark.parametrize(
    "flags, hf_method",
    [(["--draft", "prompt-lookup"], "HF prompt lookup"),
     (["--confidence-threshold", "0.4", "--schedule", "heuristic"], "HF assisted generation"),
     (["--confidence-threshold", "0.4", "--cost-aware"], "HF assisted generation")],
    ids=["prompt-lookup", "dynamic-k", "cost-aware"],
)
def test_cli_times_other_drafters_next_to_transformers(tmp_path, flags, hf_method):
    """--draft prompt-lookup and --confidence-threshold/--schedule run through the same sweep, with --hf beside."""
    out = tmp_path / "r.json"
    report = main(["--preset", "tiny-gpt2", "--k", "2,4", "--max-new-tokens", "24", "--num-prompts", "2",
                   "--repeats", "1", "--hf", *flags, "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    for r in report["runs"]:
        assert r["outputs_match_target"] is True  # ours equal the target's tokens
        assert r["hf_outputs_match_target"] is True  # and so do transformers' (no near-ties in a tiny random model)
        assert r["hf_method"] == hf_method and r["hf_speedup"] > 0
        assert (r["c"] == 0.0) == (flags[0] == "--draft")  # no draft model, no draft cost
    assert report["schedule"] == ("heuristic" if "--schedule" in flags else "constant")
    assert report["cost_aware"] == ("--cost-aware" in flags)
    if "--cost-aware" in flags:  # measured before timing: verifying 1..k+1 tokens, and c
        costs = report["step_costs"]
        assert sorted(costs["verify"]) == [1, 2, 3, 4, 5] and costs["verify"][1] == 1.0 and costs["draft"] > 0
        assert "cost-aware" in report["pair"]
    else:
        assert report["step_costs"] is None


def test_heldout_prompt_set_is_the_held_out_prompts_beyond_the_varied_ones(tmp_path):
    from test_models import save_tiny_pair
    from specdec_lib.prompts import DEFAULT_PROMPTS, HELDOUT_PROMPTS, training_prompts

    target_path, draft_path = save_tiny_pair("llama", tmp_path)  # a pair with a tokenizer, so the texts are kept
    report = main(["--target", str(target_path), "--draft", str(draft_path), "--prompt-set", "heldout", "--k", "1",
                   "--max-new-tokens", "4", "--num-prompts", "3", "--repeats", "1"])
    assert report["prompt_set"] == "heldout" and report["chat"] is False
    assert report["prompts"] == list(HELDOUT_PROMPTS[5:8]) and not set(report["prompts"]) & set(DEFAULT_PROMPTS)
    assert all(r["outputs_match_target"] for r in report["runs"])
    assert not set(HELDOUT_PROMPTS) & set(training_prompts(n_source_files=0))


def test_grounded_prompt_set_is_used_and_never_trained_on():
    from specdec_lib.prompts import GROUNDED_PROMPTS, HELDOUT_PROMPTS, training_prompts

    report = main(["--preset", "tiny-gpt2", "--prompt-set", "grounded", "--k", "1", "--max-new-tokens", "4",
                   "--num-prompts", "2", "--repeats", "1"])
    assert report["prompt_set"] == "grounded" and len(report["prompts"]) == 2
    assert 10 <= len(GROUNDED_PROMPTS) <= 20
    assert not set(GROUNDED_PROMPTS) & (set(training_prompts(n_source_files=0)) | set(HELDOUT_PROMPTS))


def test_chat_flag_wraps_prompts_and_stops_at_the_end_of_the_reply(tmp_path, capsys):
    """--chat: prompts go in the tokenizer's chat template and every method stops at its EOS; auto only for grounded."""
    from test_models import save_tiny_pair
    from transformers import AutoTokenizer

    target_path, draft_path = save_tiny_pair("llama", tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(target_path)
    tokenizer.chat_template = "{% for m in messages %}t1 {{ m['content'] }} t2 {% endfor %}{% if add_generation_prompt %}t3{% endif %}"
    tokenizer.eos_token = "t2"
    tokenizer.save_pretrained(target_path)
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(["t5 t6 t7 t8", "t9 t10 t11"]))
    common = ["--target", target_path, "--draft", "prompt-lookup", "--prompts", str(prompts), "--k", "2",
              "--max-new-tokens", "40", "--repeats", "1", "--hf", "--device", "cpu"]
    plain = main(common)
    chat = main(common + ["--chat"])
    assert plain["chat"] is False and chat["chat"] is True  # a --prompts file is plain text unless asked
    assert "chat template" in capsys.readouterr().out
    assert plain["runs"][0]["new_tokens"] == 80  # no EOS: every run writes max_new_tokens
    for r in chat["runs"]:
        assert r["outputs_match_target"] is True and r["hf_outputs_match_target"] is True
    # Greedy decoding from the wrapped prompt, stopped after the first t2, is what every method must have written.
    from specdec_lib import autoregressive_generate, load_pair

    target = load_pair(target=target_path, draft="prompt-lookup", device="cpu").target
    wrapped = [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                       add_generation_prompt=True), return_tensors="pt").input_ids
               for t in json.loads(prompts.read_text())]
    assert wrapped[0][0, 0].item() == 1 and wrapped[0][0, -1].item() == 3  # t1 ... t3: the template was applied
    expected = sum(autoregressive_generate(target, w, max_new_tokens=40, eos_token_id=2).shape[1] - w.shape[1]
                   for w in wrapped)
    assert chat["runs"][0]["new_tokens"] == expected


def test_chat_flag_needs_a_chat_template(tmp_path, capsys):
    from test_models import save_tiny_pair

    target_path, _ = save_tiny_pair("gpt2", tmp_path)
    with pytest.raises(SystemExit) as err:
        main(["--target", target_path, "--draft", "prompt-lookup", "--chat", "--k", "1", "--device", "cpu"])
    assert err.value.code == 2 and "--chat needs a tokenizer with a chat template" in capsys.readouterr().err
    # --prompt-set grounded turns chat on only where there is a template: here it stays off, without an error.
    report = main(["--target", target_path, "--draft", "prompt-lookup", "--prompt-set", "grounded", "--num-prompts", "1",
                   "--k", "1", "--max-new-tokens", "4", "--repeats", "1", "--device", "cpu"])
    assert report["chat"] is False


def test_cli_times_token_trees_next_to_chains(tmp_path, capsys):
    out, plot = tmp_path / "t.json", tmp_path / "t.png"
    report = main(["--preset", "tiny-gpt2", "--k", "1,2", "--tree", "2,1", "--tree", "3", "--max-new-tokens", "8",
                   "--num-prompts", "2", "--repeats", "1", "--out", str(out), "--plot", str(plot)])
    runs = json.loads(out.read_text())["runs"]
    assert [(r["k"], r["tree"]) for r in runs] == [(1, None), (2, None), (2, [2, 1]), (1, [3])]
    for r in runs:
        assert r["outputs_match_target"] is True and r["new_tokens"] == 16
        assert (r["predicted_speedup"] is None) == (r["tree"] is not None)
    assert report["best_k_measured"] in (1, 2)
    printed = capsys.readouterr().out
    assert "(2, 1)" in printed and "(3,)" in printed and "best tree measured" in printed
    assert plot.stat().st_size > 10_000


@pytest.mark.parametrize("flags", [["--draft", "prompt-lookup"], ["--alpha", "0.5"], ["--confidence-threshold", "0.4"],
                                   ["--cost-aware"], ["--tree", "2,0"], ["--tree", "dynamik"], ["--dynamic-tree", "4,3,8"]])
def test_cli_rejects_trees_it_cannot_run(flags, capsys):
    with pytest.raises(SystemExit):
        main(["--preset", "tiny-gpt2", "--tree", "2,1", *flags])
    assert "--tree" in capsys.readouterr().err


def test_cli_rejects_bad_dynamic_tree_settings(capsys):
    with pytest.raises(SystemExit):
        main(["--preset", "tiny-gpt2", "--tree", "dynamic", "--dynamic-tree", "4,3"])
    assert "DEPTH,TOP_K,BUDGET" in capsys.readouterr().err


def test_cli_times_dynamic_trees_greedy_and_sampled(tmp_path, capsys):
    """--tree dynamic and dynamic-costs (step costs measured first) next to a chain, exact when greedy; sampling runs too."""
    out = tmp_path / "d.json"
    main(["--preset", "tiny-gpt2", "--k", "2", "--tree", "dynamic", "--tree", "dynamic-costs", "--dynamic-tree", "3,2,4",
          "--max-new-tokens", "8", "--num-prompts", "2", "--repeats", "1", "--out", str(out)])
    runs = json.loads(out.read_text())["runs"]
    settings = {"dynamic": True, "depth": 3, "top_k": 2, "budget": 4}
    assert [r["tree"] for r in runs] == [None, settings | {"costs": False}, settings | {"costs": True}]
    assert all(r["outputs_match_target"] is True and r["k"] == (2 if r["tree"] is None else 3) for r in runs)
    printed = capsys.readouterr().out
    assert "dynamic 3,2,4 +costs" in printed and "step costs for dynamic trees" in printed
    sampled = main(["--preset", "tiny-gpt2", "--k", "2", "--tree", "dynamic", "--temperature", "1", "--max-new-tokens", "6",
                    "--num-prompts", "1", "--repeats", "1"])
    assert sampled["runs"][1]["outputs_match_target"] is None and sampled["runs"][1]["new_tokens"] == 6


def test_k_sweep_plot_marks_trees():
    runs = [{"k": k, "speedup": 1.0 + k / 10, "tokens_per_target_call": 1 + k / 2} for k in (1, 2)]
    runs.append({"k": 4, "tree": [2, 2, 1, 1], "speedup": 1.5, "tokens_per_target_call": 2.5})
    left, right = plot_k_sweep(runs, alpha=0.7, c=0.1).axes[:2]
    assert list(left.lines[1].get_xdata()) == [1, 2]
    trees = [line for line in left.lines if line.get_label().startswith("tree ")]
    assert len(trees) == 1 and list(trees[0].get_xdata()) == [4] and trees[0].get_label() == "tree (2, 2, 1, 1) (depth on x)"
    runs.append({"k": 4, "tree": [4, 2, 1, 1], "speedup": 1.5, "tokens_per_target_call": 2.5})  # equal values, same depth
    xs = [line.get_xdata()[0] for line in plot_k_sweep(runs, alpha=0.7, c=0.1).axes[0].lines if line.get_label().startswith("tree ")]
    assert xs[0] < 4 < xs[1] and xs[1] - xs[0] > 0.1  # side by side, not one on top of the other


def test_tree_step_plot_highlights_the_path_and_draws_the_mask():
    from specdec_lib.loop.tree import TokenTree, allowed_attention
    from specdec_lib.viz.plots import plot_tree_step

    tree = TokenTree.from_branching((2, 2, 1))
    labels = [f"tok{i}" for i in range(tree.size)]
    fig = plot_tree_step(tree, labels, path=[1, 5, 9], committed=3)
    left, right = fig.axes[:2]
    assert {t.get_text() for t in left.texts} == {"root"} | {f"{i}: tok{i}" for i in range(tree.size)}
    green = [line for line in left.lines if line.get_linewidth() == 2.5]
    assert len(green) == 3 and len(left.lines) == tree.size
    image = right.images[0].get_array()
    assert image.shape == (tree.size, 3 + tree.size)
    assert (image == allowed_attention(tree, 3, tree.size, 3 + tree.size).numpy()).all()


def test_cli_batch_sweep_writes_json_and_plot(tmp_path, capsys):
    out, plot = tmp_path / "b.json", tmp_path / "b.png"
    report = main(["--preset", "tiny-gpt2", "--batch", "1,3", "--max-new-tokens", "6", "--num-prompts", "2",
                   "--repeats", "1", "--out", str(out), "--plot", str(plot)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report)) and saved["ks"] == [1, 2] and saved["batch_sizes"] == [1, 3]
    methods = {r["method"] for r in saved["runs"]}
    assert methods == {"target only (ours)", "target only (transformers generate)", "speculative, K = 1",
                       "speculative, K = 2", "cost-aware"}
    for r in saved["runs"]:
        assert r["tokens_per_s"] > 0 and r["matches_target"] is True
        if r["method"] == "target only (ours)":
            assert r["speedup"] == 1.0
    aware = [r for r in saved["runs"] if r["method"] == "cost-aware"]
    assert all(a["step_costs"]["verify"]["1"] == 1.0 for a in aware)
    assert plot.stat().st_size > 10_000
    assert "crossover" in capsys.readouterr().out


@pytest.mark.parametrize("flag", [["--tree", "2,1"], ["--alpha", "0.5"], ["--temperature", "1.0"], ["--cost-aware"]])
def test_cli_batch_refuses_flags_it_does_not_sweep(flag, capsys):
    with pytest.raises(SystemExit):
        main(["--preset", "tiny-gpt2", "--batch", "1,2", *flag])
    assert "--batch" in capsys.readouterr().err
