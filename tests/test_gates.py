import math

import torch

from lightfmp.gates import BETA, GAMMA, ZETA, HardConcreteGate


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
    g = HardConcreteGate(3)
    g.train()
    (g().sum() + g.expected_l0()).backward()
    assert g.log_alpha.grad is not None and torch.isfinite(g.log_alpha.grad).all()
