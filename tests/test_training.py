"""training.fit drives any gate module: the hard-concrete path is unchanged, each gate learns, the step schedule."""
import math

import numpy as np
import pytest
import torch

from helpers import record_steps
from lightfmp.config import RunConfig
from lightfmp.errors import LightFMPError
from lightfmp.gates import AutoFieldGate, HardConcreteGate, LPFSGate
from lightfmp.models import ModelConfig, build_model
from lightfmp.pipeline import phase_plan
from lightfmp.rows import ArrayRows
from lightfmp.schema import FeatureSchema, Field
from lightfmp.splits import SALT_HOLDOUT
from lightfmp.training import Plan, TrainConfig, Trainer, fit


def _schema(fields: int, vocab: int) -> FeatureSchema:
    return FeatureSchema("y", [Field(f"f{i}", "categorical", vocab=[f"v{j}" for j in range(vocab)])
                               for i in range(fields)])


def _small():
    """400 rows of 4 fields (ids 2..11); the label leans on f0."""
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 12, size=(400, 4)).astype(np.int32)
    y = (rng.random(400) < 1 / (1 + np.exp(-(ids[:, 0] - 7) / 1.5))).astype(np.float32)
    return _schema(4, 10), ArrayRows(ids[:300], y[:300]), ArrayRows(ids[300:], y[300:])


# log_alpha and per-epoch train logloss recorded from the training loop before gates became modules
# (same data, seeds and config): the hard-concrete path must reproduce them exactly. The hold-out cases were
# recorded again when each gate step came to read the next 1/batches of the epoch's pass over the hold-out
# instead of a full batch (the joint case,
# which has no hold-out, is the original recording).
BEFORE = {
    "holdout": ({"gate_holdout": 0.25},
                [2.359306812286377, 1.8351380825042725, 1.6140393018722534, 1.2238197326660156],
                [0.7156321730243561, 0.6944603332101482]),
    "joint": ({"gate_holdout": 0.0},
              [2.7241013050079346, 0.8458300828933716, 2.500703811645508, 1.465856671333313],
              [0.709957038561503, 0.6845592149098714]),
    "target_k": ({"gate_holdout": 0.25, "target_k": 4, "l0_lambda": 0.05},
                 [3.0324509143829346, 3.196139335632324, 2.9881043434143066, 3.1887683868408203],
                 [0.7156129079322292, 0.6942498455308888]),
    "sparse": ({"gate_holdout": 0.25, "sparse_embeddings": True},
               [2.3595399856567383, 1.9210143089294434, 1.5954922437667847, 1.2165659666061401],
               [0.715708188270325, 0.6947736348191352]),
}


@pytest.mark.parametrize("case", sorted(BEFORE))
def test_hard_concrete_training_is_unchanged(case):
    kw, log_alpha, losses = BEFORE[case]
    schema, rows, valid = _small()
    torch.manual_seed(0)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8], dropout=0.1), gated=True)
    hist = fit(model, rows, valid, TrainConfig(epochs=2, batch_size=32, **kw), seed=5, select_best=False)
    torch.testing.assert_close(model.gate.log_alpha.detach(), torch.tensor(log_alpha), atol=1e-6, rtol=0)
    assert [e["train_logloss"] for e in hist["epochs"]] == pytest.approx(losses, rel=1e-6)
    assert all("expected_l0" in e for e in hist["epochs"])


@pytest.mark.parametrize("holdout", [0.25, 0.6])
def test_gate_steps_read_each_held_out_row_once_an_epoch(holdout, monkeypatch):
    """A gate step follows every weight step, and over one epoch the gate steps read every held-out row exactly
    once, in batches that differ by at most one row; with more held-out than weight rows too."""
    seen, weight_steps = record_steps(monkeypatch)
    schema, rows, valid = _small()
    torch.manual_seed(0)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
    fit(model, rows, valid, TrainConfig(epochs=1, batch_size=32, gate_holdout=holdout), seed=5, select_best=False)
    _, hold = rows.split(holdout, 5, SALT_HOLDOUT)
    assert len(seen) == len(weight_steps) == math.ceil((len(rows) - len(hold)) / 32)
    assert {len(b) for b in seen} <= {len(hold) // len(seen), len(hold) // len(seen) + 1}
    got = np.concatenate(seen)
    assert len(got) == len(hold)
    key = lambda a: sorted(map(tuple, a.tolist()))  # noqa: E731  (rows as tuples: the multiset of held-out rows)
    assert key(got) == key(hold.take(np.arange(len(hold))).arrays()[0])


def test_autofield_gate_steps_keep_full_batches(monkeypatch):
    """A bilevel baseline keeps its own alternation: every AutoField controller step reads a full batch (cycling
    the hold-out), as its paper's first-order bilevel training does."""
    batches, _ = record_steps(monkeypatch)
    schema, rows, valid = _small()
    torch.manual_seed(0)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gate=AutoFieldGate(4))
    fit(model, rows, valid, TrainConfig(epochs=1, batch_size=32, gate_holdout=0.25), seed=5, select_best=False)
    assert len(batches) == math.ceil((len(rows) - len(rows.split(0.25, 5, SALT_HOLDOUT)[1])) / 32)
    assert {len(b) for b in batches} == {32}


def _planted(n: int = 3000):
    """6 fields of 10 values; the label is (almost) a function of f2 alone, the rest is pure noise."""
    rng = np.random.default_rng(1)
    ids = rng.integers(2, 12, size=(n, 6)).astype(np.int32)
    y = (rng.random(n) < np.where(ids[:, 2] < 7, 0.85, 0.15)).astype(np.float32)
    return _schema(6, 10), ArrayRows(ids, y)


GATES = {"hard_concrete": lambda n: HardConcreteGate(n), "autofield": AutoFieldGate, "lpfs": LPFSGate}


@pytest.mark.parametrize("name", sorted(GATES))
def test_fit_trains_each_gate_and_the_planted_field_ranks_first(name):
    schema, rows = _planted()
    torch.manual_seed(0)
    gate = GATES[name](6)
    before = [p.detach().clone() for p in gate.parameters()]
    model = build_model("mlp", schema, ModelConfig(embed_dim=4, hidden=[16]), gate=gate)
    assert model.gate is gate
    fit(model, rows, None, TrainConfig(epochs=4, batch_size=128), seed=0, select_best=False)
    assert all(not torch.equal(b, p.detach()) for b, p in zip(before, gate.parameters()))
    scores = gate.scores()
    assert scores.shape == (6,)
    assert int(torch.argmax(scores)) == 2, scores
    assert float(scores[2]) > float(torch.cat([scores[:2], scores[3:]]).max())


def _spy(cls):
    """`cls` recording the progress of every after_step call."""
    class Spy(cls):
        def __init__(self, n):
            super().__init__(n)
            self.seen = []

        def after_step(self, progress, cfg):
            self.seen.append(progress)
            super().after_step(progress, cfg)
    return Spy


@pytest.mark.parametrize("cls", [HardConcreteGate, AutoFieldGate, LPFSGate])
@pytest.mark.parametrize("holdout", [0.0, 0.25])
def test_steps_hold_out_and_schedules(cls, holdout):
    schema, rows, _ = _small()
    gate = _spy(cls)(4)
    model = build_model("mlp", schema, ModelConfig(embed_dim=3, hidden=[4]), gate=gate)
    cfg = TrainConfig(epochs=2, batch_size=32, gate_holdout=holdout)
    hist = fit(model, rows, None, cfg, seed=2, select_best=False)
    # bilevel gates train the weights on the rows outside the hold-out; LPFS (joint) and holdout 0 use all rows
    weight_rows = rows.split(holdout, 2, SALT_HOLDOUT)[0] if cls.uses_holdout and holdout > 0 else rows
    assert len(weight_rows) < len(rows) or not (cls.uses_holdout and holdout > 0)
    total = cfg.epochs * math.ceil(len(weight_rows) / cfg.batch_size)
    assert gate.seen == pytest.approx([(i + 1) / total for i in range(total)])  # progress after each step
    assert hist["rows"] == len(rows)
    if cls is AutoFieldGate:
        assert float(gate.tau) == pytest.approx(AutoFieldGate.TAU_END)   # annealed to the end of the schedule
    if cls is LPFSGate:
        assert float(gate.eps) == pytest.approx(LPFSGate.EPS_END)


@pytest.mark.parametrize("cls", [AutoFieldGate, LPFSGate])
def test_two_fits_over_spans_run_one_schedule(cls):
    """A search in two fits (the subset's epochs, then one pass over other rows) runs one schedule when each fit
    is given its span: progress rises without a jump back from 0 to 1 and the annealing ends where one fit's does."""
    schema, rows, _ = _small()
    gate = _spy(cls)(4)
    model = build_model("mlp", schema, ModelConfig(embed_dim=3, hidden=[4]), gate=gate)
    cfg = TrainConfig(epochs=2, batch_size=32, gate_holdout=0.0)
    first, second = rows.take(np.arange(100)), rows.take(np.arange(100, 300))
    fit(model, first, None, cfg, seed=2, select_best=False, span=(0.0, 0.4))
    steps_first = len(gate.seen)
    assert gate.seen[-1] == pytest.approx(0.4)
    fit(model, second, None, cfg, epochs=1, seed=3, select_best=False, span=(0.4, 1.0))
    assert all(b > a for a, b in zip(gate.seen, gate.seen[1:])) and gate.seen[-1] == pytest.approx(1.0)
    assert len(gate.seen) == steps_first + math.ceil(200 / 32)
    end = float(gate.tau) if cls is AutoFieldGate else float(gate.eps)
    assert end == pytest.approx(cls.TAU_END if cls is AutoFieldGate else cls.EPS_END)


def test_a_flat_validation_curve_does_not_stop_training():
    schema, rows, valid = _small()
    torch.manual_seed(0)
    model = build_model("mlp", schema, ModelConfig(embed_dim=3, hidden=[4]))
    # lr 0: every epoch scores exactly what the first did, which is no evidence of getting worse
    hist = fit(model, rows, valid, TrainConfig(epochs=4, batch_size=64, lr=0.0, patience=1))
    assert [e["epoch"] for e in hist["epochs"]] == [1, 2, 3, 4]
    assert hist["best_epoch"] == 1


def test_patience_stops_once_validation_is_worse_beyond_noise():
    """Validation labels are the training labels inverted: each epoch learns the training rule and gets measurably
    worse on the validation rows, so patience 1 stops after the second epoch and the first is kept."""
    schema, rows, valid = _small()
    flipped = ArrayRows(valid.ids, 1 - valid.labels())
    torch.manual_seed(0)
    model = build_model("mlp", schema, ModelConfig(embed_dim=3, hidden=[4]))
    hist = fit(model, rows, flipped, TrainConfig(epochs=6, batch_size=16, lr=0.05, patience=1))
    assert [e["epoch"] for e in hist["epochs"]] == [1, 2]
    assert hist["best_epoch"] == 1
    assert hist["epochs"][1]["valid"]["logloss"] > hist["epochs"][0]["valid"]["logloss"]
    hist = fit(model, rows, flipped, TrainConfig(epochs=3, batch_size=16, lr=0.05, patience=0))
    assert len(hist["epochs"]) == 3


def test_a_fit_given_its_models_validation_keeps_the_model_as_given_until_an_epoch_beats_it():
    """`given` (the model's own validation): with inverted validation labels every epoch is worse than the model as
    given, so the fit stops after its first epoch (patience 1, measurably worse) and hands back the weights it was
    given, bit for bit (best_epoch 0); on the true labels an epoch beats the start and is kept."""
    from lightfmp.training import validate
    schema, rows, valid = _small()
    flipped = ArrayRows(valid.ids, 1 - valid.labels())
    torch.manual_seed(0)
    model = build_model("mlp", schema, ModelConfig(embed_dim=3, hidden=[4]))
    cfg = TrainConfig(epochs=6, batch_size=16, lr=0.05, patience=1)
    given = {k: v.clone() for k, v in model.state_dict().items()}
    hist = fit(model, rows, flipped, cfg, given=validate(model, flipped))
    assert [e["epoch"] for e in hist["epochs"]] == [1] and hist["best_epoch"] == 0
    assert all(torch.equal(v, given[k]) for k, v in model.state_dict().items())
    hist = fit(model, rows, valid, cfg, given=validate(model, valid))
    assert hist["best_epoch"] >= 1
    assert not all(torch.equal(v, given[k]) for k, v in model.state_dict().items())


def test_an_epoch_measurably_worse_in_logloss_is_not_the_best_whatever_its_auc():
    from lightfmp.training import Plan, track_best
    rng = np.random.default_rng(1)
    best = rng.exponential(0.5, 10_000)
    noise = rng.normal(0.0, 0.2, 10_000)
    model = build_model("mlp", *(_small()[:1]), ModelConfig(embed_dim=3, hidden=[4]))
    state = _state(best)
    track_best(state, {"valid": {"auc": 0.8}}, best + noise - noise.mean() + 0.006, 1, model, Plan(epochs=5))
    assert state.best_epoch == 0 and state.best_losses is best  # higher AUC, logloss worse by 3 SE: not the best
    within = best + noise - noise.mean() + 0.002
    track_best(state, {"valid": {"auc": 0.8}}, within, 2, model, Plan(epochs=5))
    assert state.best_epoch == 2 and state.best_losses is within and state.best_score == 0.8
    assert state.best_state is not None


def _epochs(seed: int):
    """The per-row validation losses of a lowest-logloss epoch, a maker of other epochs' losses k standard errors
    of the paired difference above it (each with noise of its own, so two such epochs differ by noise too), and a
    small model for `track_best` to copy."""
    rng = np.random.default_rng(seed)
    low = rng.exponential(0.5, 10_000)
    se = 0.2 / np.sqrt(10_000)

    def above(k: float) -> np.ndarray:
        noise = rng.normal(0.0, 0.2, 10_000)
        return low + noise - noise.mean() + k * se
    return low, above, build_model("mlp", *(_small()[:1]), ModelConfig(embed_dim=3, hidden=[4]))


def test_not_measurably_worse_does_not_chain_from_epoch_to_epoch():
    """Each epoch within two SE of the best before it, by higher AUC, would let the logloss drift far from its
    lowest; the reference is the lowest-logloss epoch, so the drifting epoch is neither the best nor spared by the
    early stop."""
    from lightfmp.training import Plan, stop_early, track_best
    lowest, above, model = _epochs(2)
    state = _state(None)
    track_best(state, {"valid": {"auc": 0.75}}, lowest, 1, model, Plan(epochs=5))
    assert state.best_epoch == 1 and state.least_losses is lowest
    track_best(state, {"valid": {"auc": 0.76}}, above(1.5), 2, model, Plan(epochs=5))  # within noise of the lowest
    assert state.best_epoch == 2 and state.least_losses is lowest
    drift = above(3.0)  # ~1.1 SE above epoch 2 (the noises differ), 3 SE above the lowest
    track_best(state, {"valid": {"auc": 0.77}}, drift, 3, model, Plan(epochs=5))
    assert state.best_epoch == 2 and state.best_score == 0.76
    assert stop_early(state, {"valid": {"auc": 0.77}}, drift, 3, TrainConfig(patience=1), Plan(epochs=5))


def test_an_epoch_that_makes_the_best_measurably_worse_becomes_the_best():
    """A later epoch with a lower AUC but a logloss measurably below the best epoch's: the best would now be an epoch
    measurably worse than another, which is never the best."""
    from lightfmp.training import Plan, track_best
    low, above, model = _epochs(3)
    state = _state(None)
    track_best(state, {"valid": {"auc": 0.77}}, above(5.0), 1, model, Plan(epochs=5))
    assert state.best_epoch == 1
    track_best(state, {"valid": {"auc": 0.76}}, low, 2, model, Plan(epochs=5))
    assert state.best_epoch == 2 and state.best_score == 0.76 and state.least_losses is low


def test_a_state_without_the_lowest_losses_starts_it_at_the_best_epochs():
    """A checkpoint written before the lowest epoch's losses were kept: the reference is pinned to the best epoch's
    losses once, and does not move with later bests."""
    from lightfmp.training import Plan, track_best
    low, above, model = _epochs(4)
    state = _state(low, best_epoch=2)
    track_best(state, {"valid": {"auc": 0.76}}, above(1.5), 3, model, Plan(epochs=5))
    assert state.best_epoch == 3 and state.least_losses is low
    track_best(state, {"valid": {"auc": 0.77}}, above(3.0), 4, model, Plan(epochs=5))
    assert state.best_epoch == 3


def test_a_diverged_first_epoch_is_not_the_best():
    from lightfmp.training import Plan, track_best
    model = build_model("mlp", *(_small()[:1]), ModelConfig(embed_dim=3, hidden=[4]))
    state = _state(None)
    track_best(state, {"valid": {"auc": 0.75}}, np.full(100, np.nan), 1, model, Plan(epochs=5))
    assert state.best_epoch == 0 and state.least_losses is None
    good = np.random.default_rng(5).exponential(0.5, 100)
    track_best(state, {"valid": {"auc": 0.71}}, good, 2, model, Plan(epochs=5))
    assert state.best_epoch == 2 and state.least_losses is good


def test_a_resumed_fit_keeps_the_best_epochs_per_row_losses(tmp_path):
    """The per-row losses early stopping compares with travel in the checkpoint: a flat curve interrupted after
    epoch 2 and resumed still runs to the last epoch (without them, patience alone would stop it at epoch 3)."""
    from lightfmp.checkpoint import Checkpoint
    schema, rows, valid = _small()
    cfg = TrainConfig(epochs=4, batch_size=64, lr=0.0, patience=1)

    def stop_at_3(epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    model = build_model("mlp", schema, ModelConfig(embed_dim=3, hidden=[4]))
    with pytest.raises(KeyboardInterrupt):
        fit(model, rows, valid, cfg, checkpoint=Checkpoint(tmp_path, "p", {}), epoch_start=stop_at_3)
    torch.manual_seed(0)
    model = build_model("mlp", schema, ModelConfig(embed_dim=3, hidden=[4]))
    hist = fit(model, rows, valid, cfg, checkpoint=Checkpoint(tmp_path, "p", {}))
    assert hist["resumed_from_epoch"] == 2
    assert [e["epoch"] for e in hist["epochs"]] == [1, 2, 3, 4]


def _state(best_losses, best_epoch=0):
    from lightfmp.checkpoint import TrainState
    return TrainState(epoch=best_epoch + 1, history=[], best_score=0.7, best_epoch=best_epoch, best_losses=best_losses)


def test_stop_early_compares_the_per_row_losses_with_the_lowest_logloss_epoch():
    from lightfmp.training import Plan, stop_early
    rng = np.random.default_rng(0)
    best = rng.exponential(0.5, 10_000)
    noise = rng.normal(0.0, 0.2, 10_000)
    rec, cfg, plan = {"valid": {}}, TrainConfig(patience=1), Plan(epochs=10)
    # a dip of 0.002 against a standard error of 0.002 (2 x 0.2 / sqrt(10,000) = 0.004 is the cut): go on
    assert not stop_early(_state(best), rec, best + noise - noise.mean() + 0.002, 1, cfg, plan)
    assert stop_early(_state(best), rec, best + noise - noise.mean() + 0.006, 1, cfg, plan)
    # not before `patience` epochs since the best, never with patience 0 or a plan that keeps the last epoch
    assert not stop_early(_state(best, best_epoch=1), rec, best + 1.0, 1, cfg, plan)
    assert not stop_early(_state(best), rec, best + 1.0, 1, TrainConfig(patience=0), plan)
    assert not stop_early(_state(best), rec, best + 1.0, 1, cfg, Plan(epochs=10, select_best=False))
    # no per-row losses of the best epoch (a checkpoint written before they were kept): patience alone decides
    assert stop_early(_state(None), rec, best, 1, cfg, plan)
    # diverged weights (NaN losses) are worse, not a tie
    assert stop_early(_state(best), rec, np.full_like(best, np.nan), 1, cfg, plan)


def test_a_gate_for_another_schema_or_two_gates_are_refused():
    schema, _, _ = _small()
    with pytest.raises(LightFMPError, match="gate has 3 fields"):
        build_model("mlp", schema, ModelConfig(embed_dim=3, hidden=[4]), gate=LPFSGate(3))
    with pytest.raises(LightFMPError, match="not both"):
        build_model("mlp", schema, ModelConfig(embed_dim=3, hidden=[4]), gated=True, gate=LPFSGate(4))


def test_the_gate_hold_out_follows_the_split_seed_not_the_training_seed():
    """The hold-out is a row assignment like the split: the plan's split_seed draws it (--seed), its seed (--init-seed)
    does not; without a split_seed the seed draws it."""
    schema, rows, _ = _small()
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
    held = lambda plan: Trainer(model, rows, TrainConfig(), plan, "cpu", "t").hold.row_numbers()  # noqa: E731
    same = held(Plan(1, seed=3, split_seed=7))
    assert np.array_equal(same, held(Plan(1, seed=9, split_seed=7)))
    assert np.array_equal(held(Plan(1, seed=7)), same)
    assert not np.array_equal(held(Plan(1, seed=3)), same)


def test_phase_plans_draw_training_from_init_seed_and_the_hold_out_from_seed():
    plan = phase_plan(RunConfig.of(seed=3, init_seed=7), seed_offset=1)
    assert plan["seed"] == 8 and plan["split_seed"] == 4
    plain = phase_plan(RunConfig.of(seed=3), seed_offset=1)
    assert plain["seed"] == plain["split_seed"] == 4  # without --init-seed: as before the flag
