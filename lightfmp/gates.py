"""Hard-concrete gates (Louizos, Welling & Kingma 2018), one per input field: the only place the gate lives."""
from __future__ import annotations

import math

import torch
from torch import nn

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
EPS = 1e-6


class HardConcreteGate(nn.Module):
    """z_f in [0, 1] per field: sampled while training, deterministic at evaluation.

    sample:        u ~ U(eps, 1-eps); s = sigmoid((log u - log(1-u) + log_alpha) / beta)
                   z = clamp(s * (zeta - gamma) + gamma, 0, 1)
    deterministic: z = clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)
    expected L0:   sum_f sigmoid(log_alpha_f - beta * log(-gamma / zeta))
    """

    def __init__(self, n_fields: int, init_log_alpha: float = 2.0, beta: float = BETA, gamma: float = GAMMA,
                 zeta: float = ZETA):
        super().__init__()
        self.beta, self.gamma, self.zeta = beta, gamma, zeta
        self.log_alpha = nn.Parameter(torch.full((n_fields,), float(init_log_alpha)))

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(self.log_alpha.shape, generator=generator, device=self.log_alpha.device)
        u = u.clamp(EPS, 1 - EPS)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def deterministic(self) -> torch.Tensor:
        return (torch.sigmoid(self.log_alpha) * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def open_probability(self) -> torch.Tensor:
        """P(z_f != 0) per field; its sum is the expected L0 norm."""
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-self.gamma / self.zeta))

    def expected_l0(self) -> torch.Tensor:
        return self.open_probability().sum()

    def forward(self) -> torch.Tensor:
        return self.sample() if self.training else self.deterministic()
