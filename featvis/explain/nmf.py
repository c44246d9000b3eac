"""Non-negative matrix factorisation, our own: ``X ≈ W H`` with ``W, H >= 0``, deterministic per seed.

"The Building Blocks of Interpretability" (Olah et al., Distill 2018) factors a layer's
activations (positions x channels) into a few *neuron groups*: ``W`` [positions, k] says where
each group is present, ``H`` [k, channels] is each group's direction in channel space.

The solver is hierarchical alternating least squares (HALS; Cichocki & Phan 2009), the
coordinate-descent method behind scikit-learn's default ``cd`` solver: each column of ``W`` and
row of ``H`` in turn gets its exact non-negative least-squares update. It starts from a seeded
random draw scaled like scikit-learn's ``init="random"`` and runs in float64 on the CPU, so one
seed gives the same groups on any machine. The reported error is scikit-learn's
``reconstruction_err_``: the Frobenius norm ``||X - W H||``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._util.errors import FeatvisError

_EPS = 1e-12


@dataclass
class NMFResult:
    """``W`` [n, k] and ``H`` [k, m] (float64, non-negative) with ``X ≈ W @ H``; ``error`` = ||X - WH||_F,
    ``relative_error`` = error / ||X||_F; ``iterations`` run (sweeps over W and H)."""

    W: torch.Tensor
    H: torch.Tensor
    error: float
    relative_error: float
    iterations: int


def nmf(X: torch.Tensor, k: int, *, seed: int = 0, max_iter: int = 5000, tol: float = 1e-7) -> NMFResult:
    """Factor a non-negative matrix ``X`` [n, m] into ``k`` non-negative parts (see the module docstring).

    Stops after ``max_iter`` sweeps or when one sweep lowers the squared error by less than
    ``tol`` of itself (HALS creeps along flat valleys, so the default is strict). Components are
    ordered by the size of their part of ``X`` (largest first).
    """
    X = torch.as_tensor(X).detach().to("cpu", torch.float64)
    if X.dim() != 2:
        raise FeatvisError(f"NMF needs a 2-D matrix, got shape {tuple(X.shape)}")
    n, m = X.shape
    if not 1 <= k <= min(n, m):
        raise FeatvisError(f"cannot factor a {n}x{m} matrix into {k} groups; use 1..{min(n, m)}")
    if bool((X < 0).any()):
        raise FeatvisError("NMF needs non-negative values and this matrix has negative ones; use a layer after its ReLU")
    generator = torch.Generator().manual_seed(seed)
    scale = (X.mean() / k).sqrt()
    W = scale * torch.randn(n, k, generator=generator, dtype=torch.float64).abs()
    H = scale * torch.randn(k, m, generator=generator, dtype=torch.float64).abs()
    norm2 = float((X * X).sum()) or 1.0
    previous, iterations = float("inf"), 0
    for iterations in range(1, max_iter + 1):
        _hals_sweep(X, W, H)
        _hals_sweep(X.T, H.T, W.T)
        error2 = float(((X - W @ H) ** 2).sum())
        if previous - error2 < tol * error2:
            break
        previous = error2
    order = torch.argsort((W.sum(0) * H.sum(1)), descending=True)
    W, H = W[:, order].contiguous(), H[order].contiguous()
    error = float(torch.linalg.matrix_norm(X - W @ H))
    return NMFResult(W, H, error, error / norm2**0.5, iterations)


def _hals_sweep(X: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> None:
    """Update every row of ``H`` in place (``W`` fixed) by its exact non-negative least-squares step."""
    WtX, WtW = W.T @ X, W.T @ W
    for j in range(H.shape[0]):
        step = (WtX[j] - WtW[j] @ H) / max(float(WtW[j, j]), _EPS)
        H[j] = (H[j] + step).clamp_min(0)
