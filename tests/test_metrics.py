import numpy as np
import pytest

from lightfmp.metrics import (SIGNIFICANT_SE, log_loss, paired_difference, roc_auc, selection_stability,
                              worse_beyond_noise)


def test_auc_closed_forms():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied
    # one positive above one of two negatives and tied with the other: (1 + 0.5) / 2
    assert roc_auc([1, 0, 0], [0.5, 0.5, 0.2]) == 0.75
    # a NaN score has no rank (sorted last it would rank above every other: 1.0 here): the AUC is undefined
    assert np.isnan(roc_auc([1, 0, 1, 0], [np.nan, 0.2, 0.7, 0.1]))


def test_auc_ties_infinite_scores_like_any_other():
    """Equal infinite scores (logits passed in) are a tie like any other: half a pair each."""
    assert roc_auc([1, 0], [np.inf, np.inf]) == 0.5
    assert roc_auc([0, 1, 0], [-np.inf, -np.inf, 0.3]) == 0.25
    assert roc_auc([1, 0, 1, 0], [np.inf, -np.inf, np.inf, np.inf]) == 0.75


def test_auc_matches_pair_count():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300), 2)  # many ties
    pos, neg = p[y == 1], p[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert abs(roc_auc(y, p) - pairs / (len(pos) * len(neg))) < 1e-12


def test_logloss_closed_form():
    assert abs(log_loss([1, 0], [0.8, 0.4]) - (-(np.log(0.8) + np.log(0.6)) / 2)) < 1e-12


def test_logloss_clips_certain_wrong_probabilities():
    """A probability of exactly 0 for a positive (1 for a negative) costs -log(1e-7), not infinity."""
    assert log_loss([1], [0.0]) == pytest.approx(-np.log(1e-7)) and log_loss([0], [1.0]) == pytest.approx(-np.log(1e-7))
    assert log_loss([1, 0], [1.0, 0.0]) == pytest.approx(-np.log1p(-1e-7))


def test_selection_stability_closed_forms():
    """Nogueira et al. (2018): 1 for identical sets; 0 where the sets agree as much as chance does ({0,1}, {0,2},
    {0,3} of 4: variance 1/3 on three fields, 0 on one, k/d = 1/2); -1 for disjoint halves; undefined (None) for one
    run or every run keeping every field (or none); names work as fields."""
    assert selection_stability([{0, 1}, {0, 1}, {0, 1}], 4) == 1.0
    assert selection_stability([{0, 1}, {0, 2}, {0, 3}], 4) == pytest.approx(0.0, abs=1e-12)
    assert selection_stability([{0, 1}, {2, 3}], 4) == pytest.approx(-1.0)
    # two of three agree on {a, b} of 5 fields, the third keeps {a, c}: p = (1, 2/3, 1/3, 0, 0), s^2 = 3/2 p (1 - p),
    # mean s^2 = (1/3 + 1/3) / 5, k/d = 2/5
    assert selection_stability([["a", "b"], ["a", "b"], ["a", "c"]], 5) == pytest.approx(1 - (2 / 15) / (0.4 * 0.6))
    assert selection_stability([{0, 1}], 4) is None
    assert selection_stability([{0, 1}, {0, 1}], 2) is None and selection_stability([set(), set()], 3) is None


def test_selection_stability_of_random_sets_is_about_zero():
    """Sets of 5 of 40 fields drawn at random agree only by chance: the estimator's mean over many draws is ~0."""
    rng = np.random.default_rng(0)
    values = [selection_stability([set(rng.choice(40, 5, replace=False)) for _ in range(3)], 40) for _ in range(2000)]
    assert abs(np.mean(values)) < 0.02


def test_paired_difference_closed_form():
    """Mean and standard error (sample std, n - 1) of the per-row differences: differences 1, 2, 3, 6 have mean 3,
    sample variance 14 / 3, so SE sqrt(14 / 3 / 4). Every paired test (the keep rules, early stopping, averaging,
    export validation) reads this SE."""
    mean, se = paired_difference([2.0, 3.0, 4.0, 7.0], [1.0, 1.0, 1.0, 1.0])
    assert mean == 3.0 and abs(se - np.sqrt(14 / 3 / 4)) < 1e-15


def test_paired_difference_refuses_losses_of_other_rows():
    """Loss vectors of different lengths are not paired (numpy would broadcast them to a wrong standard error); a
    column and a row vector of the same rows are."""
    with pytest.raises(ValueError, match="3 and 1 rows"):
        paired_difference([1.0, 2.0, 3.0], [1.0])
    assert paired_difference(np.array([[1.0], [2.0], [3.0]]), np.zeros(3)) == pytest.approx((2.0, np.sqrt(1 / 3)))


def test_worse_beyond_noise_at_its_two_standard_errors():
    """Worse only beyond SIGNIFICANT_SE (2) standard errors of the per-row difference; an unchanged loss is not worse,
    a constant rise is, a NaN loss is (diverged weights never win)."""
    old = np.ones(4)
    d = np.array([1.0, -1.0, 1.0, -1.0])  # sample std 2 / sqrt(3), SE 1 / sqrt(3) over 4 rows
    se = 1 / np.sqrt(3)
    assert SIGNIFICANT_SE == 2.0
    assert not worse_beyond_noise(old, old)
    assert worse_beyond_noise(old + 1e-9, old)
    assert not worse_beyond_noise(old - 1.0, old)
    assert not worse_beyond_noise(old + d + 1.99 * se, old) and worse_beyond_noise(old + d + 2.01 * se, old)
    assert worse_beyond_noise(np.array([1.0, np.nan, 1.0, 1.0]), old)
