"""Per-field gates: one module per gate-based selection method, all driven by the one training loop (training.fit).

A gate holds a value z_f per input field that scales that field's embedding. `training.fit` asks it for
    sample(generator)        z [F] for a training step (a random draw for stochastic gates)
    deterministic()          z [F] for evaluation and for pruning
    penalty(progress, cfg)   the regulariser added to the gate's loss (a scalar; zero for gates without one)
    after_step(progress, cfg)  called once after each training step (proximal steps, temperature schedules)
    summary()                what the gate adds to an epoch's history record
    uses_holdout             True: gate steps use held-out rows (bilevel, when cfg.gate_holdout > 0);
                             False: gates and weights always take one joint step
    holdout_pass             with a hold-out: True, the gate steps of an epoch read its held-out rows once, a
                             share after each weight step; False, each gate step reads a full batch, cycling
                             the hold-out (the alternation of bilevel methods such as AutoField's)
and a selector ranks fields by `scores()` (most useful first when sorted descending).

`progress` is the fraction of training done: before the step for `penalty`, after it for `after_step`, so a
schedule set in `after_step` is the one the next step would have computed for itself. The training knobs a gate
reads (`GateConfig`: l0_lambda, l0_warmup, target_k, gate_lr) come from the training config; each gate's own
constants are class attributes.

    HardConcreteGate   Louizos, Welling & Kingma 2018: Light-FMP's gate, lambda * E[L0] with a warm-up
    AutoFieldGate      Wang et al., WWW 2022: keep/drop logits per field, annealed Gumbel-softmax, bilevel
    LPFSGate           Guo et al., 2022: smoothed-L0 gate x^2 / (x^2 + eps), eps decaying, proximal L1 on x
"""
from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
GATE_INIT = 2.0  # log_alpha of a new hard-concrete gate: deterministic gate 0.957, open probability ~0.97
EPS = 1e-6


class GateConfig(Protocol):
    """The training knobs gates read (training.TrainConfig has them)."""
    l0_lambda: float
    l0_warmup: float
    target_k: int | None
    gate_lr: float


def geometric(start: float, end: float, progress: float) -> float:
    """start * (end / start) ** progress: from `start` at progress 0 to `end` at progress 1."""
    return start * (end / start) ** progress


class Gate(nn.Module):
    """A z_f per field: sampled while training, deterministic at evaluation (what `forward` returns)."""
    uses_holdout = False
    holdout_pass = False

    def __init__(self, num_fields: int):
        super().__init__()
        self.num_fields = int(num_fields)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def deterministic(self) -> torch.Tensor:
        raise NotImplementedError

    def scores(self) -> torch.Tensor:
        """Per-field ranking score [F], detached: higher = more useful."""
        raise NotImplementedError

    def penalty(self, progress: float, cfg: GateConfig) -> torch.Tensor:
        return torch.zeros((), device=next(self.parameters()).device)

    def after_step(self, progress: float, cfg: GateConfig) -> None:
        pass

    def summary(self) -> dict:
        return {}

    def forward(self) -> torch.Tensor:
        return self.sample() if self.training else self.deterministic()


class HardConcreteGate(Gate):
    """z_f in [0, 1] per field (Louizos et al. 2018).

    sample:        u ~ U(eps, 1-eps); s = sigmoid((log u - log(1-u) + log_alpha) / beta)
                   z = clamp(s * (zeta - gamma) + gamma, 0, 1)
    deterministic: z = clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)
    expected L0:   sum_f sigmoid(log_alpha_f - beta * log(-gamma / zeta))
    penalty:       ramp * lambda * E[L0], or ramp * lambda * |E[L0] - k| in target-k mode, where ramp grows
                   linearly from 0 to 1 over the first `l0_warmup` of training
    scores:        log_alpha (the order of the deterministic gate, its ties at 0 and 1 broken)
    Gate steps read the hold-out once an epoch (`holdout_pass`): as many steps as the weights, each on its share.
    """
    uses_holdout = True
    holdout_pass = True

    def __init__(self, n_fields: int, init_log_alpha: float = GATE_INIT, beta: float = BETA, gamma: float = GAMMA,
                 zeta: float = ZETA):
        super().__init__(n_fields)
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

    def penalty(self, progress: float, cfg: GateConfig) -> torch.Tensor:
        # the warm-up: while embeddings are still near zero no field looks useful, and the penalty alone would
        # close them all
        ramp = min(1.0, progress / cfg.l0_warmup) if cfg.l0_warmup > 0 else 1.0
        l0 = self.expected_l0()
        if cfg.target_k is not None:
            return ramp * cfg.l0_lambda * (l0 - cfg.target_k).abs()
        return ramp * cfg.l0_lambda * l0

    def summary(self) -> dict:
        return {"expected_l0": float(self.expected_l0().detach())}

    def scores(self) -> torch.Tensor:
        return self.log_alpha.detach().clone()


class AutoFieldGate(Gate):
    """AutoField (Wang et al., WWW 2022): per field two logits a_f = (keep, drop).

    sample:        z_f = softmax((a_f + g) / tau)[keep], g ~ Gumbel(0, 1) per entry
    deterministic: z_f = softmax(a_f / tau)[keep]
    temperature:   tau = TAU_START * (TAU_END / TAU_START) ** progress (geometric annealing toward a discrete choice)
    scores:        P(keep) = softmax(a_f)[keep]
    The controller is trained on held-out rows (bilevel, first order). No penalty.
    """
    uses_holdout = True
    TAU_START, TAU_END = 1.0, 0.05

    def __init__(self, n_fields: int):
        super().__init__(n_fields)
        self.logits = nn.Parameter(torch.zeros(n_fields, 2))
        self.register_buffer("tau", torch.tensor(self.TAU_START))

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(self.logits.shape, generator=generator, device=self.logits.device).clamp(EPS, 1 - EPS)
        return torch.softmax((self.logits - torch.log(-torch.log(u))) / self.tau, dim=1)[:, 0]

    def deterministic(self) -> torch.Tensor:
        return torch.softmax(self.logits / self.tau, dim=1)[:, 0]

    def keep_probability(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=1)[:, 0]

    def after_step(self, progress: float, cfg: GateConfig) -> None:
        self.tau.fill_(geometric(self.TAU_START, self.TAU_END, progress))

    def scores(self) -> torch.Tensor:
        return self.keep_probability().detach()


class LPFSGate(Gate):
    """LPFS (Guo et al., 2022): z_f = g(x_f) = x_f^2 / (x_f^2 + eps), the same in training and evaluation.

    eps:           EPS_START * (EPS_END / EPS_START) ** progress, so the gates polarise toward {0, 1}
    after a step:  proximal L1 (soft threshold) x <- sign(x) * max(|x| - gate_lr * lambda, 0), with
                   lambda = max(l0_lambda, MIN_LAMBDA), so useless fields reach exactly 0
    scores:        |x| (g is increasing in |x| for a given eps: the order of g, its saturated ties broken)
    Gates and weights take one joint step; the L1 acts only through the proximal step (no penalty term).
    """
    uses_holdout = False
    EPS_START, EPS_END = 1.0, 1e-4
    MIN_LAMBDA = 1e-4

    def __init__(self, n_fields: int):
        super().__init__(n_fields)
        self.x = nn.Parameter(torch.ones(n_fields))
        self.register_buffer("eps", torch.tensor(self.EPS_START))

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.deterministic()

    def deterministic(self) -> torch.Tensor:
        x2 = self.x.pow(2)
        return x2 / (x2 + self.eps)

    @torch.no_grad()
    def after_step(self, progress: float, cfg: GateConfig) -> None:
        threshold = cfg.gate_lr * max(cfg.l0_lambda, self.MIN_LAMBDA)
        self.x.copy_(torch.sign(self.x) * (self.x.abs() - threshold).clamp_min(0.0))
        self.eps.fill_(geometric(self.EPS_START, self.EPS_END, progress))

    def scores(self) -> torch.Tensor:
        return self.x.detach().abs()
