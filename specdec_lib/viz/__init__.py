"""Visualisation: see a speculative step, and plot what the benchmark measured.

- widgets: coloured token views, the step viewer and the live step widget (ipywidgets, imported lazily)
- plots: speedup vs K, the (alpha, c) heat map, acceptance per position, accepted tokens per step, a token tree step
"""
