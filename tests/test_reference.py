"""featvis.reference against PyTorch: forward and every gradient within 1e-10 in float64.

Ground truth is PyTorch itself (nn.Conv2d for every padding mode, F.max_pool2d,
F.avg_pool2d) and torch.autograd.gradcheck's finite differences. The sweeps are
hypothesis-generated but derandomized, so CI sees the same bounded set every run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from featvis import reference
from featvis import FeatvisError

TOL = 1e-10
# PyTorch warns that 'same' padding with an even kernel copies the input; irrelevant here
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")
SWEEP = settings(max_examples=80, deadline=None, derandomize=True)


def _torch_conv(x, weight, bias, stride, padding, dilation, groups, padding_mode):
    """PyTorch's convolution for the configuration, through nn.Conv2d so every padding mode is covered."""
    conv = nn.Conv2d(
        x.shape[-3], weight.shape[0], tuple(weight.shape[-2:]), stride=stride, padding=padding,
        dilation=dilation, groups=groups, bias=bias is not None, padding_mode=padding_mode,
    )
    params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
    return functional_call(conv, params, (x,))


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, rtol=0, atol=TOL), float((ours - theirs).abs().max())


def _leaf(shape, generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()


@st.composite
def conv_configs(draw):
    groups = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    mode = draw(st.sampled_from(reference.PADDING_MODES))
    padding = draw(
        st.one_of(st.just("same"), st.just("valid"), st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2)))
    )
    stride = 1 if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = (0, 0) if padding == "valid" else ((padding, padding) if isinstance(padding, int) else padding)
    if padding == "same":
        pads = tuple(math.ceil(d * (k - 1) / 2) for k, d in zip(kernel, dilation))
    # smallest input the kernel fits in (and that reflect / circular padding can mirror), plus a random extra
    size = [
        max(1, d * (k - 1) + 1 - 2 * p, p + 1) + draw(st.integers(0, 4))
        for k, d, p in zip(kernel, dilation, pads)
    ]
    return dict(
        batch=draw(st.integers(1, 2)), in_per_group=draw(st.integers(1, 2)), out_per_group=draw(st.integers(1, 2)),
        groups=groups, kernel=kernel, size=size, stride=stride, padding=padding, dilation=dilation,
        padding_mode=mode, bias=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
    )


@SWEEP
@given(conv_configs())
def test_conv2d_matches_pytorch_forward_and_gradients(cfg):
    g = torch.Generator().manual_seed(cfg["seed"])
    x = _leaf((cfg["batch"], cfg["in_per_group"] * cfg["groups"], *cfg["size"]), g)
    weight = _leaf((cfg["out_per_group"] * cfg["groups"], cfg["in_per_group"], *cfg["kernel"]), g)
    bias = _leaf((weight.shape[0],), g) if cfg["bias"] else None
    args = (cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"], cfg["padding_mode"])
    theirs = _torch_conv(x, weight, bias, *args)
    ours = reference.conv2d(x, weight, bias, *args)
    _close(ours, theirs)

    grad_output = torch.randn(theirs.shape, generator=g, dtype=torch.float64)
    leaves = [t for t in (x, weight, bias) if t is not None]
    truths = torch.autograd.grad(theirs, leaves, grad_output)
    for mine, truth in zip(torch.autograd.grad(ours, leaves, grad_output), truths):
        _close(mine, truth)
    # the explicit NumPy backward, called directly, gives the same numbers
    dx, dweight, dbias = reference.conv2d_backward(grad_output.numpy(), x.detach().numpy(), weight.detach().numpy(), *args)
    _close(torch.from_numpy(dx), truths[0])
    _close(torch.from_numpy(dweight), truths[1])
    _close(torch.from_numpy(dbias), grad_output.sum((0, 2, 3)))


@st.composite
def pool_configs(draw, dilated: bool):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilated else (1, 1)
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    size = [max(1, d * (k - 1) + 1 - 2 * p) + draw(st.integers(0, 5)) for k, d, p in zip(kernel, dilation, padding)]
    return dict(
        shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), *size), kernel_size=kernel, stride=stride,
        padding=padding, dilation=dilation, ceil_mode=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
    )


@SWEEP
@given(pool_configs(dilated=True))
def test_max_pool2d_matches_pytorch(cfg):
    g = torch.Generator().manual_seed(cfg.pop("seed"))
    x = _leaf(cfg.pop("shape"), g)
    theirs, their_index = F.max_pool2d(x, return_indices=True, **cfg)
    ours, our_index = reference.max_pool2d(x, return_indices=True, **cfg)
    _close(ours, theirs)  # windows wholly in the padding give -inf in both
    real = torch.isfinite(theirs)
    assert torch.equal(our_index[real], their_index[real])
    # PyTorch routes the gradient of an all-padding window (-inf) to an arbitrary pixel; such
    # windows do not depend on the input, so their gradient is left out of the comparison
    grad_output = torch.randn(theirs.shape, generator=g, dtype=torch.float64) * real
    (mine,), (truth,) = torch.autograd.grad(ours, [x], grad_output), torch.autograd.grad(theirs, [x], grad_output)
    _close(mine, truth)
    dx = reference.max_pool2d_backward(grad_output.numpy(), x.detach().numpy(), **cfg)
    _close(torch.from_numpy(dx), truth)


@SWEEP
@given(pool_configs(dilated=False), st.booleans(), st.sampled_from([None, 1, 3, -2]))
def test_avg_pool2d_matches_pytorch(cfg, count_include_pad, divisor_override):
    g = torch.Generator().manual_seed(cfg.pop("seed"))
    x = _leaf(cfg.pop("shape"), g)
    del cfg["dilation"]
    cfg.update(count_include_pad=count_include_pad, divisor_override=divisor_override)
    theirs, ours = F.avg_pool2d(x, **cfg), reference.avg_pool2d(x, **cfg)
    _close(ours, theirs)
    grad_output = torch.randn(theirs.shape, generator=g, dtype=torch.float64)
    (mine,), (truth,) = torch.autograd.grad(ours, [x], grad_output), torch.autograd.grad(theirs, [x], grad_output)
    _close(mine, truth)
    dx = reference.avg_pool2d_backward(grad_output.numpy(), x.detach().numpy(), **cfg)
    _close(torch.from_numpy(dx), truth)


@pytest.mark.parametrize(
    "size, kernel, stride, padding",
    [
        (5, 2, 2, 1),  # ceil adds a window that would start in the trailing padding: dropped
        (6, 3, 2, 1),  # ceil adds a window hanging over the end: kept
        (7, 3, 2, 0),  # ceil changes nothing
        (12, 3, 2, 0),  # GoogLeNet's pools on an even map: ceil keeps one more window
        (2, 3, 3, 1),  # one window wider than the input
    ],
)
def test_ceil_mode_edges_match_pytorch(size, kernel, stride, padding):
    x = torch.randn(1, 2, size, size + 1, dtype=torch.float64, requires_grad=True)
    for count_include_pad in (True, False):
        theirs = F.avg_pool2d(x, kernel, stride, padding, ceil_mode=True, count_include_pad=count_include_pad)
        _close(reference.avg_pool2d(x, kernel, stride, padding, ceil_mode=True, count_include_pad=count_include_pad), theirs)
    theirs, their_index = F.max_pool2d(x, kernel, stride, padding, ceil_mode=True, return_indices=True)
    ours, our_index = reference.max_pool2d(x, kernel, stride, padding, ceil_mode=True, return_indices=True)
    _close(ours, theirs)
    assert torch.equal(our_index, their_index)


def test_max_pool_ties_nan_and_minus_infinity_follow_pytorch():
    x = torch.tensor(
        [[[
            [1.0, 1.0, 5.0, 5.0],
            [0.0, 1.0, 5.0, 2.0],
            [math.nan, 2.0, -math.inf, -math.inf],
            [3.0, math.nan, -math.inf, -math.inf],
        ]]],
        dtype=torch.float64,
    )
    theirs, their_index = F.max_pool2d(x, 2, return_indices=True)
    ours, our_index = reference.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(our_index, their_index)  # first maximum on ties, the last NaN, the first pixel if all -inf
    assert torch.equal(ours.isnan(), theirs.isnan())
    assert torch.equal(ours[~ours.isnan()], theirs[~theirs.isnan()])


def test_window_wholly_in_padding_gets_no_gradient():
    # kernel 2, dilation 2, padding 1 on a one-pixel-wide map: each window reads columns -1 and 1 only
    x = torch.randn(1, 1, 3, 1, dtype=torch.float64, requires_grad=True)
    ours = reference.max_pool2d(x, 2, stride=1, padding=1, dilation=2)
    assert torch.equal(ours, F.max_pool2d(x, 2, stride=1, padding=1, dilation=2))
    assert bool(torch.isinf(ours).all())
    (grad,) = torch.autograd.grad(ours, x, torch.ones_like(ours))
    assert torch.count_nonzero(grad) == 0  # the output does not depend on x


def _gradcheck_cases():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 7, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    return [
        ("conv groups+dilation+stride", lambda x, w, b: reference.conv2d(x, w, b, (2, 1), 1, (2, 1), groups=2), (x, w, b)),
        ("conv reflect same", lambda x, w, b: reference.conv2d(x, w, b, 1, "same", 2, 2, "reflect"), (x, w, b)),
        ("conv circular", lambda x, w: reference.conv2d(x, w, None, 1, (2, 1), 1, 2, "circular"), (x, w)),
        ("conv replicate unbatched", lambda x, w: reference.conv2d(x[0], w, None, 2, 2, 1, 2, "replicate"), (x, w)),
        ("max pool ceil dilated", lambda x: reference.max_pool2d(x, 3, 2, 1, dilation=(1, 2), ceil_mode=True), (x,)),
        ("avg pool ceil exclude pad", lambda x: reference.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), (x,)),
    ]


@pytest.mark.parametrize("name, fn, inputs", _gradcheck_cases(), ids=[c[0] for c in _gradcheck_cases()])
def test_autograd_functions_pass_torch_gradcheck(name, fn, inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_numpy_in_numpy_out_tensor_in_tensor_out():
    image = np.arange(25, dtype=np.int64).reshape(1, 1, 5, 5)  # integers are computed in float64
    kernel = np.ones((1, 1, 3, 3))
    out = reference.conv2d(image, kernel)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_array_equal(out, F.conv2d(torch.from_numpy(image).double(), torch.from_numpy(kernel)).numpy())
    pooled = reference.max_pool2d(image[0].astype(np.float32), 2)  # unbatched CHW
    assert isinstance(pooled, np.ndarray) and pooled.shape == (1, 2, 2)
    np.testing.assert_array_equal(pooled, F.max_pool2d(torch.from_numpy(image[0]).double(), 2).numpy())

    x32 = torch.from_numpy(image).float()
    result = reference.conv2d(x32, torch.from_numpy(kernel).float())
    assert isinstance(result, torch.Tensor) and result.dtype == torch.float32
    assert torch.equal(result, F.conv2d(x32, torch.from_numpy(kernel).float()))
    assert reference.avg_pool2d(x32, 2).dtype == torch.float32


def test_drops_into_a_model_and_trains_like_pytorch():
    """A model built on the reference ops gets the same parameter gradients as its PyTorch twin."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)

    def net(ops, weight, bias):
        return ops.avg_pool2d(ops.max_pool2d(torch.relu(ops.conv2d(x, weight, bias, padding=1)), 2), 2).sum()

    theirs = torch.autograd.grad(net(F, conv.weight, conv.bias), [conv.weight, conv.bias])
    ours = torch.autograd.grad(net(reference, conv.weight, conv.bias), [conv.weight, conv.bias])
    for mine, truth in zip(ours, theirs):
        _close(mine, truth)


# ----------------------------------------------------------------------------- bad input

X = torch.randn(1, 2, 5, 5, dtype=torch.float64)
W = torch.randn(3, 2, 3, 3, dtype=torch.float64)

BAD_CONVS = [
    ("2-D input", lambda ops: ops.conv2d(X[0, 0], W), "shape"),
    ("5-D input", lambda ops: ops.conv2d(X[None], W), "shape"),
    ("3-D weight", lambda ops: ops.conv2d(X, W[0]), "weight"),
    ("channel mismatch", lambda ops: ops.conv2d(X, torch.randn(3, 3, 3, 3, dtype=torch.float64)), "channels"),
    ("groups do not divide out channels", lambda ops: ops.conv2d(X.repeat(1, 2, 1, 1), W, groups=2), "groups"),
    ("zero groups", lambda ops: ops.conv2d(X, W, groups=0), "groups"),
    ("kernel larger than input", lambda ops: ops.conv2d(X, torch.randn(3, 2, 6, 6, dtype=torch.float64)), "larger"),
    ("dilated kernel larger than input", lambda ops: ops.conv2d(X, W, dilation=3), "larger"),
    ("zero stride", lambda ops: ops.conv2d(X, W, stride=0), "stride"),
    ("negative stride", lambda ops: ops.conv2d(X, W, stride=(1, -1)), "stride"),
    ("zero dilation", lambda ops: ops.conv2d(X, W, dilation=0), "dilation"),
    ("negative padding", lambda ops: ops.conv2d(X, W, padding=-1), "padding"),
    ("same with stride", lambda ops: ops.conv2d(X, W, stride=2, padding="same"), "same"),
    ("unknown padding string", lambda ops: ops.conv2d(X, W, padding="full"), "padding"),
    ("stride of three values", lambda ops: ops.conv2d(X, W, stride=(1, 1, 1)), "stride"),
    ("bias of wrong size", lambda ops: ops.conv2d(X, W, torch.randn(2, dtype=torch.float64)), "bias"),
    ("no output channels", lambda ops: ops.conv2d(X, torch.randn(0, 2, 3, 3, dtype=torch.float64)), "output channels"),
    ("empty kernel", lambda ops: ops.conv2d(X, torch.randn(3, 2, 0, 3, dtype=torch.float64)), "kernel"),
    ("max pool 2-D input", lambda ops: ops.max_pool2d(X[0, 0], 2), "shape"),
    ("max pool padding over half the kernel", lambda ops: ops.max_pool2d(X, 2, padding=2), "half"),
    ("max pool padding over half a dilated kernel", lambda ops: ops.max_pool2d(X, 3, padding=2, dilation=3), "half"),
    ("max pool kernel larger than input", lambda ops: ops.max_pool2d(X, 6), "window"),
    ("max pool zero kernel", lambda ops: ops.max_pool2d(X, 0), "kernel"),
    ("max pool zero stride", lambda ops: ops.max_pool2d(X, 2, stride=0), "stride"),
    ("max pool negative stride", lambda ops: ops.max_pool2d(X, 2, stride=-1), "stride"),
    ("max pool zero dilation", lambda ops: ops.max_pool2d(X, 2, dilation=0), "dilation"),
    ("max pool negative padding", lambda ops: ops.max_pool2d(X, 2, padding=-1), "padding"),
    ("max pool empty map", lambda ops: ops.max_pool2d(torch.randn(1, 1, 0, 4), 1), "empty"),
    ("avg pool padding over half the kernel", lambda ops: ops.avg_pool2d(X, 2, padding=2), "half"),
    ("avg pool zero divisor", lambda ops: ops.avg_pool2d(X, 2, divisor_override=0), "divisor"),
    ("avg pool kernel larger than input", lambda ops: ops.avg_pool2d(X, 6), "window"),
    ("avg pool zero stride", lambda ops: ops.avg_pool2d(X, 2, stride=0), "stride"),
]


@pytest.mark.parametrize("case, call, word", BAD_CONVS, ids=[c[0] for c in BAD_CONVS])
def test_refuses_what_pytorch_refuses_with_a_named_problem(case, call, word):
    with pytest.raises((RuntimeError, ValueError, IndexError)):
        call(F)
    for given_input in (lambda t: t, lambda t: t.numpy()):  # tensors and arrays alike
        with pytest.raises(FeatvisError, match=f"(?i){word}"):
            call(_OnArrays(given_input))


class _OnArrays:
    """The reference ops, with every tensor argument converted by `convert` first."""

    def __init__(self, convert):
        self.convert = convert

    def __getattr__(self, name):
        op = getattr(reference, name)
        return lambda *args, **kw: op(*(self.convert(a) if isinstance(a, torch.Tensor) else a for a in args), **kw)


@pytest.mark.parametrize(
    "mode, padding, refused",
    [("reflect", 4, False), ("reflect", 5, True), ("circular", 5, False), ("circular", 6, True), ("replicate", 9, False)],
)
def test_padding_mode_limits_match_pytorch(mode, padding, refused):
    """Reflect padding must stay below the input size, circular may not wrap twice, replicate is free."""
    def theirs():
        return _torch_conv(X, W, None, 1, padding, 1, 1, mode)

    def ours():
        return reference.conv2d(X, W, padding=padding, padding_mode=mode)

    if refused:
        with pytest.raises(RuntimeError):
            theirs()
        with pytest.raises(FeatvisError, match=mode):
            ours()
    else:
        _close(ours(), theirs())


@SWEEP
@given(
    st.integers(1, 6), st.integers(1, 6), st.integers(-1, 3), st.integers(-1, 3), st.integers(-1, 3),
    st.sampled_from(["zeros", "reflect", "circular"]), st.sampled_from([1, 2]),
)
def test_refuses_exactly_when_pytorch_refuses(size, kernel, stride, padding, dilation, mode, groups):
    """Over a sweep mixing valid and invalid convolutions and pools, ours raises iff PyTorch raises.

    One deliberate exception: nn.Conv2d with a reflect/replicate/circular padding_mode and a
    negative padding silently crops the input (a side effect of F.pad); F.conv2d refuses
    negative padding and so do we, so that combination is not drawn.
    """
    assume(padding >= 0 or mode == "zeros")
    x = torch.randn(1, 2, size, size + 1, dtype=torch.float64)
    w = torch.randn(2, 2 // groups, kernel, kernel, dtype=torch.float64)
    calls = [
        (lambda: _torch_conv(x, w, None, stride, padding, dilation, groups, mode),
         lambda: reference.conv2d(x, w, None, stride, padding, dilation, groups, mode)),
        (lambda: F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=True),
         lambda: reference.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=True)),
        (lambda: F.avg_pool2d(x, kernel, stride, padding, ceil_mode=False),
         lambda: reference.avg_pool2d(x, kernel, stride, padding, ceil_mode=False)),
    ]
    for theirs, ours in calls:
        try:
            expected = theirs()
        except (RuntimeError, ValueError):
            with pytest.raises(FeatvisError):
                ours()
        else:
            _close(ours(), expected)
