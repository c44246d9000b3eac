"""`featvis.optvis.adam.Adam` against torch.optim.Adam (the ground truth): the same parameters,
bit for bit, over many steps, and a render process that never imports torch._dynamo (the reason
featvis has its own Adam)."""

from __future__ import annotations

import subprocess
import sys

import torch

from featvis.optvis.adam import Adam


def _params(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.randn(4, 3, 16, 9, 2, generator=g)
    image = torch.randn(2, 3, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
    return [spectrum.requires_grad_(), image.requires_grad_(), torch.randn(5, generator=g).requires_grad_()]


def test_same_numbers_as_torch_optim_adam_bit_for_bit():
    ours_params, torch_params = _params(0), _params(0)
    ours, reference = Adam(ours_params, lr=0.05), torch.optim.Adam(torch_params, lr=0.05)
    g = torch.Generator().manual_seed(1)
    for step in range(30):
        grads = [torch.randn(p.shape, generator=g) * 10 ** (step % 5 - 2) for p in ours_params]
        for optimizer, params in ((ours, ours_params), (reference, torch_params)):
            optimizer.zero_grad()
            for i, (p, grad) in enumerate(zip(params, grads)):
                if not (i == 2 and step % 3 == 1):  # the last parameter sometimes has no gradient: not stepped
                    p.grad = grad.clone()
            optimizer.step()
        for mine, theirs in zip(ours_params, torch_params):
            assert torch.equal(mine, theirs), f"step {step}: max difference {(mine - theirs).abs().max():.3g}"
    assert ours_params[1].is_contiguous(memory_format=torch.channels_last)


def test_zero_grad_clears_gradients_as_set_to_none():
    params = _params(2)
    optimizer = Adam(params, lr=0.1)
    sum(p.sum() for p in params).backward()
    optimizer.zero_grad()
    assert all(p.grad is None for p in params)


def test_rendering_imports_no_torch_dynamo():
    """torch.optim's optimisers import torch._dynamo when built (about 1.6 s); a render must not."""
    code = ("import sys, torch, featvis\n"
            "model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())\n"
            "featvis.render(model, '0:1', steps=2, size=16, natural=False, progress=False)\n"
            "print('torch._dynamo' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "False"
