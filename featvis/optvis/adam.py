"""`Adam`: the optimiser of `render`, without torch.optim.

Why: constructing any torch.optim optimiser imports torch._dynamo (its methods are wrapped in
``torch._disable_dynamo``), about 1.6 s of every ``featvis render`` process on a CPU; rendering
needs none of it. The update is Adam (Kingma & Ba 2015) computed as torch.optim.Adam computes
it with its defaults (no weight decay, no AMSGrad, single-tensor path), operation for operation,
so the two give the same numbers bit for bit (tested).
"""

from __future__ import annotations

from typing import Iterable

import torch


class Adam:
    """Adam over ``params`` with learning rate ``lr``; ``zero_grad`` then ``step`` as torch.optim's."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = [0] * len(self.params)  # per parameter: one without a gradient is not stepped

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        beta1, beta2 = self.betas
        for i, (p, exp_avg, exp_avg_sq) in enumerate(zip(self.params, self.exp_avgs, self.exp_avg_sqs)):
            if p.grad is None:
                continue
            self.steps[i] += 1
            step_size = self.lr / (1 - beta1 ** self.steps[i])
            bias_correction2_sqrt = (1 - beta2 ** self.steps[i]) ** 0.5
            exp_avg.lerp_(p.grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)

