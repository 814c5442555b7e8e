"""Dataset builders: synthetic CTR data with known truth, and MovieLens-100K as a CTR table."""

from .movielens import fetch_movielens_100k, prepare_ctr_table
from .synthetic import synthesize

__all__ = ["synthesize", "fetch_movielens_100k", "prepare_ctr_table"]
