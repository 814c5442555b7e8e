"""Benchmark of field-selection methods against Light-FMP (`lightfmp bench`)."""
from .core import ablate_subset, parse_fractions, parse_methods, parse_seeds, quick_config, run_bench
from .selectors import GATE_METHODS, METHODS, SELECTORS

__all__ = ["ablate_subset", "parse_fractions", "parse_methods", "parse_seeds", "quick_config", "run_bench",
           "GATE_METHODS", "METHODS", "SELECTORS"]
