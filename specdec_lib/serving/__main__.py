"""`python -m specdec_lib.serving export|run|serve`: hand the course's models to vLLM and run them there.

    python -m specdec_lib.serving export [--out build/vllm] [--only target,draft,eagle] [--force]   # course venv
    .venv-vllm/bin/python -m specdec_lib.serving run --method ngram --k 3 --prompts FILE --batch 4 --max-tokens 64 --out r.json
    .venv-vllm/bin/python -m specdec_lib.serving serve --method draft --k 3 --prompt "..." --max-tokens 32 --out s.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .layout import BUILD_DIR, EXPORTS, METHODS, missing_exports, read_prompt_file


def _positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _window(text: str) -> tuple[int, int]:
    """argparse type: 'MIN,MAX' with 1 <= MIN <= MAX."""
    try:
        low, high = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX such as 1,4, got {text!r}") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"need 1 <= MIN <= MAX, got {low},{high}")
    return low, high


def parser() -> argparse.ArgumentParser:
    """The three commands and their options."""
    top = argparse.ArgumentParser(prog="python -m specdec_lib.serving", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write the target, the trained draft and the EAGLE-3 head for vLLM (course venv)")
    export.add_argument("--out", type=Path, default=BUILD_DIR, help=f"folder for target/, draft/, eagle/ (default {BUILD_DIR})")
    export.add_argument("--only", default=",".join(EXPORTS), help="comma-separated subset of target,draft,eagle")
    export.add_argument("--force", action="store_true", help="rewrite folders that already exist")
    for name, text in (("run", "one vLLM run over a prompt file (in .venv-vllm)"),
                       ("serve", "a server round trip: start, one completion, /metrics, stop (in .venv-vllm)")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--method", choices=METHODS, default="none", help="vLLM's speculative method (none: plain decoding)")
        command.add_argument("--k", type=_positive, default=3, help="draft tokens per step (num_speculative_tokens)")
        command.add_argument("--max-tokens", type=_positive, default=64, help="tokens to generate per prompt")
        command.add_argument("--models", type=Path, default=BUILD_DIR, help=f"the exported models (default {BUILD_DIR})")
        command.add_argument("--out", type=Path, help="write the result as JSON here (default: print it)")
    run = commands.choices["run"]
    run.add_argument("--prompts", type=Path, required=True, help="one prompt a line, newlines written as \\n")
    run.add_argument("--batch", type=_positive, default=1, help="at most this many prompts decoded at once")
    run.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    run.add_argument("--compile", action="store_true", help="let vLLM compile the model (about a minute more to start)")
    run.add_argument("--ngram", type=_window, default=(1, 4), metavar="MIN,MAX",
                     help="ngram only: the lengths of suffix to look up (prompt_lookup_min, prompt_lookup_max; default 1,4)")
    serve = commands.choices["serve"]
    serve.add_argument("--prompt", required=True, help="the prompt to complete")
    serve.add_argument("--log", type=Path, help="keep the server's output in this file")
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors a user can fix are one line on stderr and exit code 2."""
    args = parser().parse_args(argv)
    if args.command == "export":
        from .export import export_all

        which = tuple(w.strip() for w in args.only.split(",") if w.strip())
        unknown = sorted(set(which) - set(EXPORTS))
        if unknown or not which:
            print(f"error: --only takes names from {','.join(EXPORTS)}, got {args.only!r}", file=sys.stderr)
            return 2
        export_all(args.out, which, force=args.force)
        return 0
    missing = missing_exports(args.models)
    if missing:
        print(f"error: {args.models} lacks {', '.join(missing)}: run `make vllm` (or `python -m specdec_lib.serving export`)",
              file=sys.stderr)
        return 2
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("error: vLLM is not installed in this Python; run `make vllm` and use .venv-vllm/bin/python", file=sys.stderr)
        return 2
    if args.command == "run":
        from .engine import run

        if not args.prompts.is_file():
            print(f"error: no prompt file {args.prompts}", file=sys.stderr)
            return 2
        result = run(args.method, args.k, read_prompt_file(args.prompts), args.batch, args.max_tokens, args.dtype,
                     args.models, eager=not args.compile, ngram=args.ngram)
    else:
        from .server import round_trip

        result = round_trip(args.method, args.k, args.prompt, args.max_tokens, args.models, log=args.log)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        acceptance = result["acceptance"]
        print(f"[{args.command}] {args.method}: {result.get('tokens_per_s', 0):.1f} tok/s, "
              f"{acceptance['accepted']}/{acceptance['draft_tokens']} draft tokens accepted -> {args.out}", flush=True)
    else:
        print(text)
    return 0


if __name__ == "__main__":  # vLLM starts its workers with spawn: they re-import this module, so the guard matters
    sys.exit(main())
