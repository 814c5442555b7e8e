import math

import pytest
import torch

from lightfmp.gates import BETA, GAMMA, ZETA, AutoFieldGate, HardConcreteGate, LPFSGate
from lightfmp.training import TrainConfig


def test_the_stretch_and_temperature_are_the_papers():
    """Louizos, Welling & Kingma (2018) use beta = 2/3, gamma = -0.1, zeta = 1.1 (the README's values): the closed
    forms below read the module's constants, so the constants themselves are pinned here, and two of the forms with
    the paper's literals."""
    assert (BETA, GAMMA, ZETA) == (2 / 3, -0.1, 1.1)
    g = HardConcreteGate(2)
    g.log_alpha.data.copy_(torch.tensor([0.0, 1.0]))
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert float(g.deterministic()[1]) == pytest.approx(sig(1.0) * 1.2 - 0.1, abs=1e-6)
    assert float(g.open_probability()[0]) == pytest.approx(sig(-(2 / 3) * math.log(0.1 / 1.1)), abs=1e-6)


def test_deterministic_gate_closed_form():
    g = HardConcreteGate(4)
    la = torch.tensor([-5.0, -0.5, 0.3, 4.0])
    g.log_alpha.data.copy_(la)
    expected = [min(1.0, max(0.0, 1 / (1 + math.exp(-v)) * (ZETA - GAMMA) + GAMMA)) for v in la.tolist()]
    assert torch.allclose(g.deterministic(), torch.tensor(expected), atol=1e-6)
    g.eval()
    assert torch.equal(g(), g.deterministic())


def test_expected_l0_closed_form():
    g = HardConcreteGate(3)
    g.log_alpha.data.copy_(torch.tensor([-1.0, 0.0, 2.0]))
    shift = BETA * math.log(-GAMMA / ZETA)
    expected = sum(1 / (1 + math.exp(-(v - shift))) for v in (-1.0, 0.0, 2.0))
    assert abs(float(g.expected_l0()) - expected) < 1e-6


def test_sample_matches_formula_and_l0_probability():
    torch.manual_seed(0)
    g = HardConcreteGate(1)
    g.log_alpha.data.fill_(0.4)
    gen = torch.Generator().manual_seed(3)
    u = torch.rand(1, generator=torch.Generator().manual_seed(3)).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + 0.4) / BETA)
    assert torch.allclose(g.sample(gen), (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1))
    # Monte Carlo: P(z > 0) equals the L0 probability
    g2 = HardConcreteGate(20000)
    g2.log_alpha.data.fill_(0.4)
    z = g2.sample(torch.Generator().manual_seed(1))
    assert abs(float((z > 0).float().mean()) - float(g2.open_probability()[0])) < 0.02
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0
    assert float((z == 0).float().mean()) > 0.05 and float((z == 1).float().mean()) > 0.05  # hard zeros and ones


def test_gate_is_differentiable():
    """The sampled gate itself carries a gradient to log_alpha (the reparameterised draw), apart from the penalty's."""
    g = HardConcreteGate(3, init_log_alpha=0.0)  # open probability ~0.83, deterministic gate 0.5
    g.train()
    z = g.sample(torch.Generator().manual_seed(0))
    assert ((z > 0) & (z < 1)).any()  # a draw off the clamp, where the gradient is not 0
    z.sum().backward()
    assert g.log_alpha.grad is not None and torch.isfinite(g.log_alpha.grad).all() and (g.log_alpha.grad != 0).any()
    g.log_alpha.grad = None
    g.expected_l0().backward()
    assert (g.log_alpha.grad > 0).all()  # the penalty's gradient: E[L0] grows with every log_alpha


# ---- the gate interface training.fit drives ---------------------------------------------------------------------
def _cfg(**kw):
    return TrainConfig(**{"l0_lambda": 0.5, "l0_warmup": 0.4, "gate_lr": 0.1, **kw})


def test_hard_concrete_penalty_warmup_and_target_k():
    g = HardConcreteGate(3)
    g.log_alpha.data.copy_(torch.tensor([-1.0, 0.0, 2.0]))
    l0 = float(g.expected_l0())
    assert float(g.penalty(0.1, _cfg())) == pytest.approx(0.25 * 0.5 * l0)   # a quarter through the warm-up
    assert float(g.penalty(0.8, _cfg())) == pytest.approx(0.5 * l0)
    assert float(g.penalty(0.0, _cfg(l0_warmup=0.0))) == pytest.approx(0.5 * l0)
    assert float(g.penalty(1.0, _cfg(target_k=2))) == pytest.approx(0.5 * abs(l0 - 2))
    assert float(g.penalty(0.1, _cfg(target_k=2))) == pytest.approx(0.25 * 0.5 * abs(l0 - 2))  # ramped alike
    assert g.uses_holdout and g.summary() == {"expected_l0": pytest.approx(l0)}
    assert torch.equal(g.scores(), g.log_alpha.detach())


def test_autofield_gumbel_softmax_keep_entry_closed_form():
    g = AutoFieldGate(3)
    a = torch.tensor([[0.4, -0.3], [0.0, 0.0], [-1.0, 2.0]])
    g.logits.data.copy_(a)
    u = torch.rand(3, 2, generator=torch.Generator().manual_seed(7)).clamp(1e-6, 1 - 1e-6)
    gumbel = -torch.log(-torch.log(u))
    for progress in (None, 0.5):
        if progress is not None:
            g.after_step(progress, _cfg())
        tau = 1.0 * (0.05 / 1.0) ** (progress or 0.0)
        assert float(g.tau) == pytest.approx(tau)
        # softmax over (keep, drop), keep entry: sigmoid of the logit difference over tau
        want = [1 / (1 + math.exp(-((a[i, 0] + gumbel[i, 0]) - (a[i, 1] + gumbel[i, 1])).item() / tau))
                for i in range(3)]
        got = g.sample(torch.Generator().manual_seed(7))
        assert torch.allclose(got, torch.tensor(want), atol=1e-5)
        det = [1 / (1 + math.exp(-(a[i, 0] - a[i, 1]).item() / tau)) for i in range(3)]
        assert torch.allclose(g.deterministic(), torch.tensor(det), atol=1e-5)
    keep = [1 / (1 + math.exp(-(a[i, 0] - a[i, 1]).item())) for i in range(3)]   # P(keep), at any temperature
    assert torch.allclose(g.scores(), torch.tensor(keep), atol=1e-6)
    assert g.uses_holdout and float(g.penalty(0.5, _cfg())) == 0.0


def test_autofield_annealed_samples_are_near_discrete_with_keep_probability():
    g = AutoFieldGate(20000)
    g.logits.data[:, 0] = 0.7                       # P(keep) = sigmoid(0.7) for every field
    g.after_step(1.0, _cfg())                       # end of the schedule: tau = 0.05
    z = g.sample(torch.Generator().manual_seed(0))
    assert float(((z > 0.05) & (z < 0.95)).float().mean()) < 0.1        # mostly 0 or 1
    assert abs(float((z > 0.5).float().mean()) - 1 / (1 + math.exp(-0.7))) < 0.015


def test_lpfs_gate_and_eps_schedule_closed_form():
    g = LPFSGate(5)
    x = torch.tensor([-2.0, -0.1, 0.0, 0.05, 1.0])
    g.x.data.copy_(x)
    assert torch.allclose(g.deterministic(), x ** 2 / (x ** 2 + 1.0))     # eps starts at 1
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert torch.equal(g.sample(gen), g.deterministic()) and torch.equal(gen.get_state(), state)  # no noise drawn
    g.after_step(0.5, _cfg(l0_lambda=0.0, gate_lr=0.0))                   # threshold 0: only eps moves
    assert float(g.eps) == pytest.approx(1.0 * (1e-4 / 1.0) ** 0.5)
    assert torch.allclose(g.deterministic(), x ** 2 / (x ** 2 + 1e-2))
    assert not g.uses_holdout and float(g.penalty(0.5, _cfg())) == 0.0


def test_lpfs_proximal_l1_soft_threshold():
    g = LPFSGate(5)
    x = torch.tensor([-2.0, -0.1, 0.0, 0.015, 1.0])
    g.x.data.copy_(x)
    g.after_step(1.0, _cfg(l0_lambda=0.2, gate_lr=0.1))                   # threshold gate_lr * lambda = 0.02
    want = [-1.98, -0.08, 0.0, 0.0, 0.98]
    assert torch.allclose(g.x.detach(), torch.tensor(want), atol=1e-7)
    assert float(g.eps) == pytest.approx(1e-4)
    g.after_step(1.0, _cfg(l0_lambda=0.0, gate_lr=0.5))                   # lambda floored at MIN_LAMBDA
    assert torch.allclose(g.x.detach(), torch.tensor([-1.98 + 5e-5, -0.08 + 5e-5, 0.0, 0.0, 0.98 - 5e-5]),
                          atol=1e-7)
    # at the end of the schedule the gate is polarised: exactly 0 for a zeroed x, ~1 for the others
    assert torch.equal(g.deterministic()[2:4], torch.zeros(2)) and float(g.deterministic()[[0, 1, 4]].min()) > 0.98
    assert torch.equal(g.scores(), g.x.detach().abs())


def test_each_gate_is_a_module_with_sample_and_deterministic_shapes():
    for g in (HardConcreteGate(4), AutoFieldGate(4), LPFSGate(4)):
        g.train()
        z = g()
        assert z.shape == (4,) and float(z.min()) >= 0.0 and float(z.max()) <= 1.0
        z.sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in g.parameters())
        g.eval()
        assert torch.equal(g(), g.deterministic()) and g.num_fields == 4
