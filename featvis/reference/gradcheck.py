"""Gradient checks for users: does autograd compute the gradient it should?

`check_gradients` runs a function or module in float64 and compares the gradients
autograd gives against independent ground truths:

* central finite differences, for every input that requires grad and every parameter;
* for `nn.Conv2d`, `nn.MaxPool2d` and `nn.AvgPool2d`, the hand-written backward of
  `featvis.reference` (complete, even when finite differences are sampled);
* for a piece that alters gradients on purpose (e.g. a redirected ReLU), an
  ``expected_grad`` callable stating the alteration, which then replaces finite
  differences as the criterion for the inputs (the finite-difference rows stay in the
  report, marked informational, to show how far the alteration departs from the truth).

Every comparison projects the outputs on a fixed random direction v, so autograd gives
the vector-Jacobian product v^T J in one backward pass and finite differences need two
forward passes per coordinate.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from featvis import reference
from featvis._util.errors import FeatvisError

__all__ = ["GradientComparison", "GradientReport", "check_gradients"]

FINITE_DIFFERENCES = "finite differences"
REFERENCE_BACKWARD = "reference backward"
EXPECTED_GRADIENT = "expected gradient"


@dataclass(frozen=True)
class GradientComparison:
    """Autograd's gradient of one tensor against one ground truth.

    max_rel_error is max|autograd - truth| / max|truth| (relative to the tensor's scale,
    so near-zero entries do not blow it up); ``passed`` is the elementwise test
    |autograd - truth| <= atol + rtol * |truth| on every compared entry.
    ``counted`` is False for informational rows that do not decide the report's result.
    """

    tensor: str
    against: str
    max_abs_error: float
    max_rel_error: float
    compared: int
    total: int
    passed: bool
    counted: bool = True


@dataclass(frozen=True)
class GradientReport:
    """Result of `check_gradients`: one row per (tensor, ground truth); ``str()`` prints a table."""

    comparisons: tuple[GradientComparison, ...]
    atol: float
    rtol: float
    eps: float

    @property
    def passed(self) -> bool:
        """True when every counted comparison passed."""
        return all(c.passed for c in self.comparisons if c.counted)

    def __bool__(self) -> bool:
        return self.passed

    def failures(self) -> list[GradientComparison]:
        """The counted comparisons that failed."""
        return [c for c in self.comparisons if c.counted and not c.passed]

    def __str__(self) -> str:
        header = f"gradient check (float64, eps={self.eps:g}, atol={self.atol:g}, rtol={self.rtol:g}): "
        header += "PASSED" if self.passed else f"FAILED ({len(self.failures())} of {len(self.comparisons)})"
        rows = [("tensor", "against", "max abs err", "max rel err", "compared", "result")]
        for c in self.comparisons:
            result = ("ok" if c.passed else "FAIL") + ("" if c.counted else " (info)")
            rows.append(
                (c.tensor, c.against, f"{c.max_abs_error:.3g}", f"{c.max_rel_error:.3g}", f"{c.compared}/{c.total}", result)
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        return "\n".join([header, *lines])


def _compare(
    tensor: str,
    against: str,
    autograd: torch.Tensor,
    truth: torch.Tensor,
    total: int,
    atol: float,
    rtol: float,
    counted: bool = True,
) -> GradientComparison:
    if autograd.shape != truth.shape:
        raise FeatvisError(f"{against} for {tensor} has shape {tuple(truth.shape)}, autograd's has {tuple(autograd.shape)}")
    error = (autograd - truth).abs()
    max_abs = float(error.max()) if error.numel() else 0.0
    scale = float(truth.abs().max()) if truth.numel() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    passed = bool((error <= atol + rtol * truth.abs()).all())
    return GradientComparison(tensor, against, max_abs, max_rel, truth.numel(), total, passed, counted)


def _outputs(result: Any) -> list[torch.Tensor]:
    """The floating-point tensors among a function's outputs (a tensor, or a tuple/list of them)."""
    items = result if isinstance(result, (tuple, list)) else [result]
    return [t for t in items if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _as_double(value: Any) -> Any:
    """A float64 copy of a floating tensor (keeping requires_grad); other values unchanged."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().to(torch.float64, copy=True).requires_grad_(value.requires_grad)
    return value


def _reference_gradients(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> dict[str, np.ndarray]:
    """The reference backward's gradients for a conv or pooling module, keyed like the report rows."""
    if isinstance(module, nn.Conv2d):
        dx, dweight, dbias = reference.conv2d_backward(
            grad, x, module.weight, module.stride, module.padding, module.dilation, module.groups, module.padding_mode
        )
        return {"input 0": dx, "weight": dweight, "bias": dbias}
    if isinstance(module, nn.MaxPool2d):
        dx = reference.max_pool2d_backward(
            grad, x, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode
        )
        return {"input 0": dx}
    if isinstance(module, nn.AvgPool2d):
        dx = reference.avg_pool2d_backward(
            grad, x, module.kernel_size, module.stride, module.padding,
            module.ceil_mode, module.count_include_pad, module.divisor_override,
        )
        return {"input 0": dx}
    return {}


def check_gradients(
    fn_or_module: Callable[..., Any] | nn.Module,
    *inputs: Any,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    eps: float = 1e-6,
    samples: int | None = None,
    seed: int = 0,
    expected_grad: Callable[[tuple[Any, ...], Any], torch.Tensor | Sequence[torch.Tensor | None]] | None = None,
) -> GradientReport:
    """Compare autograd's gradients of `fn_or_module(*inputs)` with independent ground truths.

    Works on float64 copies (a module is deep-copied and cast; its inputs and parameters
    are never modified). Checked: every input tensor with requires_grad, and for a module
    every floating parameter (frozen ones included). Put modules in eval mode first:
    finite differences need a deterministic forward pass.

    samples: compare finite differences on this many random coordinates per tensor
        (seeded by `seed`) instead of all of them, for big layers; the reference-backward
        and expected-gradient comparisons always cover every entry.
    expected_grad: for pieces that alter gradients deliberately: called with the float64
        inputs and grad_output (the projection direction, shaped like the output) and
        returning the gradient each input should get (a tensor for a single checked
        input, else one entry per positional input, None for unchecked ones).
    """
    generator = torch.Generator().manual_seed(seed)
    is_module = isinstance(fn_or_module, nn.Module)
    subject = copy.deepcopy(fn_or_module).double() if is_module else fn_or_module
    args = [_as_double(value) for value in inputs]
    checked: list[tuple[str, torch.Tensor]] = [
        (f"input {i}", value) for i, value in enumerate(args) if isinstance(value, torch.Tensor) and value.requires_grad
    ]
    if is_module:
        for name, parameter in subject.named_parameters():
            checked.append((name, parameter.requires_grad_(True)))
    if not checked:
        raise FeatvisError("nothing to check: no input requires grad and there are no parameters; call x.requires_grad_()")

    outputs = _outputs(subject(*args))
    if not outputs:
        raise FeatvisError("the function returned no floating-point tensor to differentiate")
    directions = [torch.randn(o.shape, generator=generator, dtype=torch.float64) for o in outputs]

    def projected() -> torch.Tensor:
        return sum((o * v).sum() for o, v in zip(_outputs(subject(*args)), directions))  # type: ignore[return-value]

    tensors = [t for _, t in checked]
    grads = torch.autograd.grad(projected(), tensors, allow_unused=True)
    autograd = {name: torch.zeros_like(t) if g is None else g.detach() for (name, t), g in zip(checked, grads)}

    comparisons: list[GradientComparison] = []
    input_names = {name for name, _ in checked if name.startswith("input ")}
    for name, tensor in checked:
        positions, finite = _finite_differences(projected, tensor, eps, samples, generator)
        counted = expected_grad is None or name not in input_names  # else expected_grad is the criterion
        sampled = autograd[name].reshape(-1)[positions]
        comparisons.append(_compare(name, FINITE_DIFFERENCES, sampled, finite, tensor.numel(), atol, rtol, counted))

    grad_output = directions[0] if len(directions) == 1 else tuple(directions)
    if is_module and args and isinstance(args[0], torch.Tensor) and len(directions) == 1:
        for name, truth in _reference_gradients(subject, args[0], directions[0]).items():
            if name in autograd:
                value = torch.from_numpy(np.asarray(truth))
                comparisons.append(_compare(name, REFERENCE_BACKWARD, autograd[name], value, value.numel(), atol, rtol))

    if expected_grad is not None:
        for name, truth in _expected(expected_grad, args, grad_output, input_names).items():
            comparisons.append(_compare(name, EXPECTED_GRADIENT, autograd[name], truth, truth.numel(), atol, rtol))
    return GradientReport(tuple(comparisons), atol, rtol, eps)


def _finite_differences(
    projected: Callable[[], torch.Tensor], tensor: torch.Tensor, eps: float, samples: int | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences (f(t + eps e_k) - f(t - eps e_k)) / 2 eps at all or `samples` random coordinates k."""
    count = tensor.numel()
    if samples is not None and samples < count:
        positions = torch.randperm(count, generator=generator)[:samples].sort().values
    else:
        positions = torch.arange(count)
    values = tensor.detach()  # shares storage: perturbs the (float64 copy of the) tensor in place
    estimates = torch.empty(len(positions), dtype=torch.float64)
    with torch.no_grad():
        for j, k in enumerate(positions.tolist()):
            index = np.unravel_index(k, tensor.shape)
            original = values[index].item()
            values[index] = original + eps
            plus = projected().item()
            values[index] = original - eps
            minus = projected().item()
            values[index] = original
            estimates[j] = (plus - minus) / (2 * eps)
    return positions, estimates


def _expected(
    expected_grad: Callable[..., Any], args: list[Any], grad_output: Any, input_names: set[str]
) -> dict[str, torch.Tensor]:
    """The expected input gradients, keyed "input i", checked to cover exactly the inputs that need grad."""
    with torch.no_grad():
        given = expected_grad(tuple(args), grad_output)
    if isinstance(given, torch.Tensor):
        if len(input_names) != 1:
            raise FeatvisError(
                f"expected_grad returned one tensor but {len(input_names)} inputs require grad; return one entry per input"
            )
        return {next(iter(input_names)): given.detach().to(torch.float64)}
    if len(given) != len(args):
        raise FeatvisError(
            f"expected_grad returned {len(given)} gradients for {len(args)} inputs; return one per input (None to skip)"
        )
    result = {f"input {i}": g.detach().to(torch.float64) for i, g in enumerate(given) if g is not None}
    if set(result) != input_names:
        raise FeatvisError(
            f"expected_grad gave gradients for {sorted(result)} but the inputs requiring grad are {sorted(input_names)}"
        )
    return result
