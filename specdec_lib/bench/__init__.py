"""Benchmarking: how fast, and why. Chapters 04-05 (and 11 for batches).

- timing: the one timer (synchronised on CUDA, calls interleaved), c and verification costs (`measure_step_costs`)
- theory: the speedup formula of Leviathan et al. (tokens per step, speedup, best K, alpha)
- runs: benchmark (four decoding methods timed round-robin) and sweep_k
- batch_sweep: throughput and speedup against batch size, the crossover (chapter 11)
- report: tables and the device's name; its command line, `python -m specdec_lib.bench [compare]`, is specdec_lib.cli.bench
- seed_pair: the seed's sizes with random weights, timed under an imposed acceptance rate
"""

from .runs import (HF_ASSISTED, HF_PROMPT_LOOKUP, METHODS, SPEC_CACHED, SPEC_UNCACHED, TARGET_ONLY, BenchResult, MethodResult,
                   benchmark, hf_assisted_generate, sweep_k)
from .report import format_report, format_sweep, pooled_alpha_c
from .theory import estimate_alpha, expected_speedup, expected_tokens_per_step, optimal_k
from .timing import measure_cost_ratio, measure_step_costs, median_seconds, stopwatch, sync_device, verify_cost_ratios
