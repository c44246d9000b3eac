"""Ground truth: reference 2-D convolution and pooling from the definitions, and gradient checks.

Written for correctness and readability, not speed (see benchmarks/bench_reference.py). Every op
works in float64 on explicit windows: a window index maps each (output position, kernel offset) to
the input pixel it reads, padding included (zeros, reflect, replicate, circular), so the forward
pass is one gather of all windows ("im2col") followed by a weighted sum (conv), a max or a mean; the
backward pass is the adjoint of that gather. Ops take NumPy arrays (and return NumPy) or tensors
(differentiable through the hand-written backward, via ``torch.autograd.Function``s), NCHW or CHW,
exactly like PyTorch; configurations PyTorch refuses raise ``FeatvisError`` naming the problem.

Modules: ``windows`` (the shared gather/scatter), ``conv`` (``conv2d``, ``conv2d_backward``),
``pool`` (``max_pool2d``, ``avg_pool2d`` and their backward passes), ``gradcheck``
(``check_gradients``: autograd against finite differences and these hand-written gradients).
"""

from .conv import Conv2dFunction, conv2d, conv2d_backward
from .pool import AvgPool2dFunction, MaxPool2dFunction, avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward
from .windows import PADDING_MODES

__all__ = [
    "PADDING_MODES",
    "conv2d",
    "conv2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "Conv2dFunction",
    "MaxPool2dFunction",
    "AvgPool2dFunction",
]
