"""The deliberate gradient alteration (redirected ReLU) and the exact fast LRN, checked with check_gradients."""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from featvis.reference.gradcheck import EXPECTED_GRADIENT, FINITE_DIFFERENCES, check_gradients
from featvis.optvis import RedirectedReLU, redirected_relus
from featvis.optvis.fast_layers import fast_layers, fused_conv_relus, local_response_norm


def _documented_redirect(inputs, grad):
    """The alteration as the redirected_relu docstring states it, written independently."""
    (x,) = inputs
    ordinary = grad * (x > 0)
    redirected = grad * ((x >= 0) | (grad <= 0))
    dead = [bool((ordinary[b] == 0).all()) for b in range(x.shape[0])]
    return torch.stack([redirected[b] if dead[b] else ordinary[b] for b in range(x.shape[0])])


def test_redirected_relu_gradient_is_exactly_the_documented_alteration():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    x[1] = -x[1].abs() - 0.1  # element 1: ReLU is zero everywhere, the ordinary gradient vanishes
    x.requires_grad_()
    report = check_gradients(RedirectedReLU.apply, x, expected_grad=_documented_redirect)
    assert report.passed, str(report)
    rows = {row.against: row for row in report.comparisons}
    assert rows[EXPECTED_GRADIENT].counted and rows[EXPECTED_GRADIENT].max_abs_error < 1e-12
    # finite differences see the true ReLU: they agree on elements 0 and 2 and disagree on element 1
    assert not rows[FINITE_DIFFERENCES].counted and not rows[FINITE_DIFFERENCES].passed
    live = check_gradients(RedirectedReLU.apply, x[[0, 2]].detach().requires_grad_())
    assert live.passed, str(live)


def test_redirected_gradient_pushes_dead_units_up():
    x = torch.full((1, 2, 3, 3), -1.0, requires_grad=True)
    y = RedirectedReLU.apply(x)
    assert torch.equal(y, torch.zeros_like(y))
    (-y[:, 1].sum()).backward()  # minimise -activation of channel 1: gradient descent must raise x[:, 1]
    assert (x.grad[:, 1] < 0).all() and (x.grad[:, 0] == 0).all()
    x.grad = None
    y = RedirectedReLU.apply(x)
    y[:, 1].sum().backward()  # pushing an already negative unit further down: blocked
    assert (x.grad == 0).all()


def _lucid_relu6_grad(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Lucid's ``redirected_relu6_grad`` (tensorflow/lucid, lucid/misc/redirected_relu_grad.py), line by line."""
    relu6_grad = torch.where((x < 6.0) & (x > 0.0), grad, torch.zeros_like(grad))
    neg_pushing_lower = (x < 0.0) & (grad > 0.0)
    pos_pushing_higher = (x > 6.0) & (grad < 0.0)
    redirected_grad = torch.where(neg_pushing_lower | pos_pushing_higher, torch.zeros_like(grad), grad)
    relu_grad_mag = relu6_grad.reshape(x.shape[0], -1).norm(dim=1)
    return torch.where((relu_grad_mag > 0.0).view(-1, 1, 1, 1), relu6_grad, redirected_grad)


def test_relu6_modules_get_lucids_redirected_relu6_gradient():
    """EfficientNet-Lite's and MobileNet's nn.ReLU6: element 0 partly in range, element 1 all below 0,
    element 2 all above 6 (both dead: the ordinary gradient vanishes)."""
    torch.manual_seed(2)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64) * 4 + 3
    x[1] = -x[1].abs() - 0.1
    x[2] = x[2].abs() + 6.1
    x.requires_grad_()
    grad = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    net = nn.Sequential(nn.ReLU6())
    with redirected_relus(net) as count:
        y = net(x)
        (got,) = torch.autograd.grad(y, x, grad)
    assert count == 1 and torch.equal(y, torch.nn.functional.relu6(x))
    assert torch.equal(got, _lucid_relu6_grad(x.detach(), grad))
    assert (got[1] != 0).any() and (got[2] != 0).any()  # the dead elements still get a push
    (plain,) = torch.autograd.grad(net(x), x, grad)
    assert (plain[1] == 0).all() and (plain[2] == 0).all() and "forward" not in net[0].__dict__


def test_relu_modules_are_patched_only_inside_the_block():
    relu = nn.ReLU()
    hits = []
    relu.register_forward_hook(lambda *args: hits.append(1))
    net = nn.Sequential(nn.Conv2d(3, 2, 1), relu)
    x = torch.randn(1, 3, 2, 2)
    with redirected_relus(net) as count:
        assert count == 1 and net(x).grad_fn.name() == "RedirectedReLUBackward"
    assert net(x).grad_fn.name() == "ReluBackward0" and "forward" not in relu.__dict__ and len(hits) == 2
    try:
        with redirected_relus(net):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert "forward" not in relu.__dict__


def test_fast_local_response_norm_equals_pytorch():
    torch.manual_seed(1)
    # GoogLeNet's, an even window, Lucid InceptionV1's (wider than the 9 channels), and others
    for size, alpha, beta, k in [(5, 1e-4, 0.75, 1.0), (4, 1e-2, 0.6, 2.0), (3, 0.3, 1.1, 0.5), (11, 11e-4, 0.5, 2.0),
                                 (2, 0.1, 0.75, 1.5)]:
        x = (torch.randn(2, 9, 4, 3, dtype=torch.float64) * 8).requires_grad_()
        reference = nn.LocalResponseNorm(size, alpha, beta, k).double()
        assert torch.allclose(local_response_norm(x, size, alpha, beta, k), reference(x), rtol=1e-10, atol=1e-12)
        report = check_gradients(lambda t: local_response_norm(t, size, alpha, beta, k), x)
        assert report.passed, str(report)
        g = torch.randn(2, 9, 4, 3, dtype=torch.float64)
        ours, = torch.autograd.grad(local_response_norm(x, size, alpha, beta, k), x, g)
        theirs, = torch.autograd.grad(reference(x), x, g)
        assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-12)
    lrn = nn.LocalResponseNorm(5)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), lrn)
    x = torch.randn(2, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    with fast_layers(net) as count:
        fast = net(x)
        assert count == 2 and fast.grad_fn.name() == "_LocalResponseNormBackward"  # the LRN and the convolution
    assert torch.allclose(fast, net(x), atol=1e-6) and "forward" not in lrn.__dict__


def test_fused_conv_relu_equals_conv_then_relu_and_respects_probes():
    torch.manual_seed(2)
    first = nn.Conv2d(3, 8, 7, stride=2, padding=3)  # the stride-2 RGB layer: space-to-depth input gradient
    net = nn.Sequential(first, nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(2))
    for p in net.parameters():
        p.requires_grad_(False)
    for shape in [(2, 3, 33, 30), (1, 3, 16, 16)]:
        x = torch.randn(*shape).contiguous(memory_format=torch.channels_last).requires_grad_()
        expected = net(x)
        g = torch.randn_like(expected)
        grad, = torch.autograd.grad(expected, x, g)
        with fused_conv_relus(net) as pairs:
            got = net(x)
            fused_grad, = torch.autograd.grad(got, x, g)
            assert pairs == 2 and got.grad_fn.next_functions[0][0].name() == "_ConvBackward"
        assert torch.allclose(got, expected, atol=1e-6) and torch.allclose(fused_grad, grad, atol=1e-6)
    # bfloat16: the fused layer equals the float32 reference to bfloat16's precision; oneDNN fuses
    # where the CPU has its bfloat16 convolution (AVX512BW/VL/DQ or AVX-NE-CONVERT), PyTorch's path runs it elsewhere
    onednn = "_ConvBackward" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "ReluBackward0"
    x = torch.randn(2, 3, 33, 30).contiguous(memory_format=torch.channels_last).requires_grad_()
    expected = net(x)
    g = torch.randn_like(expected)
    grad, = torch.autograd.grad(expected, x, g)
    half = copy.deepcopy(net).to(torch.bfloat16)
    xh = x.detach().to(torch.bfloat16).requires_grad_()
    with fused_conv_relus(half) as pairs:
        got = half(xh)
        fused_grad, = torch.autograd.grad(got, xh, g.to(torch.bfloat16))
        assert pairs == 2 and got.grad_fn.next_functions[0][0].name() == onednn
    assert (got.float() - expected).abs().max() < 0.05 * expected.abs().max()
    assert (fused_grad.float() - grad).abs().max() < 0.05 * grad.abs().max()
    seen = []
    handle = first.register_forward_hook(lambda module, inputs, output: seen.append(output.min().item()))
    try:
        with fused_conv_relus(net):
            net(torch.randn(1, 3, 16, 16))
    finally:
        handle.remove()
    assert seen[0] < 0  # a hooked convolution still shows its pre-activations
    assert all("forward" not in m.__dict__ for m in net)


def test_convolution_stand_ins_in_every_phase():
    """fast_layers' convolutions (the stride-2 RGB one with its space-to-depth input gradient) against PyTorch's,
    alone, under redirected ReLUs and under the fused pairs nested inside it, as render nests them;
    each block gives back exactly the forward it found."""
    torch.manual_seed(3)
    first, second = nn.Conv2d(3, 8, 7, stride=2, padding=3), nn.Conv2d(8, 6, 3, padding=2, dilation=2, groups=2, bias=False)
    net = nn.Sequential(first, nn.ReLU(), second, nn.ReLU())
    x = torch.randn(2, 3, 37, 34).contiguous(memory_format=torch.channels_last).requires_grad_()
    expected = net(x)
    g = torch.randn_like(expected)
    reference = torch.autograd.grad(expected, [x, first.weight, first.bias, second.weight], g)
    with fast_layers(net):
        ours = torch.autograd.grad(net(x), [x, first.weight, first.bias, second.weight], g)  # weight gradients too
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, reference))
    for p in net.parameters():
        p.requires_grad_(False)
    grad = reference[0]
    with fast_layers(net) as count:
        assert count == 2 and "forward" in first.__dict__
        stand_in = first.__dict__["forward"]
        for phase in (contextlib.nullcontext, redirected_relus, fused_conv_relus):
            with phase(net):
                got = net(x)
                ours, = torch.autograd.grad(got, x, g)
            assert torch.allclose(got, expected, atol=1e-5) and torch.allclose(ours, grad, atol=1e-5), phase
            assert first.__dict__["forward"] is stand_in
    assert all("forward" not in m.__dict__ for m in net)
