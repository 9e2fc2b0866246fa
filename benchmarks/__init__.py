"""Benchmarks: per-step time, memory and compile time of functional_optim / compat vs torch.optim.

Run ``python -m benchmarks.run --help`` (see ``benchmarks/README.md``).
"""
