import numpy as np

from lightfmp.metrics import log_loss, roc_auc


def test_auc_closed_forms():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied
    # one positive above one of two negatives and tied with the other: (1 + 0.5) / 2
    assert roc_auc([1, 0, 0], [0.5, 0.5, 0.2]) == 0.75


def test_auc_matches_pair_count():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300), 2)  # many ties
    pos, neg = p[y == 1], p[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert abs(roc_auc(y, p) - pairs / (len(pos) * len(neg))) < 1e-12


def test_logloss_closed_form():
    assert abs(log_loss([1, 0], [0.8, 0.4]) - (-(np.log(0.8) + np.log(0.6)) / 2)) < 1e-12
