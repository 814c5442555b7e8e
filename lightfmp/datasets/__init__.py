"""Dataset builders: synthetic CTR data with known truth, and real data fetched into the cache at run time.

``FETCHERS`` maps the name used by ``lightfmp data fetch NAME`` to a callable ``(home=None, quiet=False) -> Path``
returning the prepared data file.
"""

from .kddcup import fetch_kddcup04_bio
from .movielens import fetch_movielens_100k, prepare_ctr_table
from .synthetic import synthesize

FETCHERS = {
    "movielens-100k": fetch_movielens_100k,
    "kddcup04-bio": fetch_kddcup04_bio,
}

__all__ = ["synthesize", "fetch_movielens_100k", "fetch_kddcup04_bio", "prepare_ctr_table", "FETCHERS"]
