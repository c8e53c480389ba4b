"""Small helpers that `compressor`, `runtime` and `benchmarks` share: atomic writes, library versions and
machine facts, parameter counts, and reading GLUE-style data files.

It imports nothing from the project (and nothing heavy at import time: torch and onnx only inside the
functions that need them), so `runtime` can use it without importing `compressor` and a serving image
carries it at no cost. Only what has two or more users lives here.
"""
