"""A planted-superposition CNN for the dictionary tests, with a photo collection whose contents are known.

32 features, each drawn by its own input pattern, are packed into the 16 channels of layer ``mix``:
``detect`` (a 4x4, stride-4 convolution) holds the 32 patterns as orthonormal filters, so at each 4x4
cell of the image its ReLU'd channel i is the amplitude of pattern i there; ``mix`` (1x1) writes
feature i along its planted direction ``DIRECTIONS[i]`` (random unit vectors in 16 channels: no neuron
is one feature). The head maps ``mix`` to 8 classes at each position (``head``, 1x1) and averages them.

Photos are 37 px (what a 32 px model prepares without resizing; the 32 px it sees start at 2, 2): a
grid of 8 x 8 cells on grey, each empty, or carrying one or two patterns with amplitudes in [0.6, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

FEATURES, CHANNELS, CLASSES, CELL, GRID = 32, 16, 8, 4, 8
SIDE, BORDER = 37, 2

_generator = torch.Generator().manual_seed(1234)
#: [32, 3, 4, 4] orthonormal patterns (as vectors of 48)
PATTERNS = torch.linalg.qr(torch.randn(3 * CELL * CELL, FEATURES, generator=_generator, dtype=torch.float64))[0].T \
    .reshape(FEATURES, 3, CELL, CELL).float()
#: [32, 16] the planted unit directions of the features in mix's channels
DIRECTIONS = torch.nn.functional.normalize(torch.randn(FEATURES, CHANNELS, generator=_generator), dim=1)
#: [8, 16] the head's weights
HEAD = torch.randn(CLASSES, CHANNELS, generator=_generator)


class Superposition(nn.Module):
    def __init__(self):
        super().__init__()
        self.detect = nn.Conv2d(3, FEATURES, CELL, stride=CELL, bias=False)
        self.relu = nn.ReLU()
        self.mix = nn.Conv2d(FEATURES, CHANNELS, 1, bias=False)
        self.head = nn.Conv2d(CHANNELS, CLASSES, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        with torch.no_grad():
            self.detect.weight.copy_(2 * PATTERNS)  # the net sees x - 0.5, and a cell is 0.5 + 0.5 * a * pattern
            self.mix.weight.copy_(DIRECTIONS.T[:, :, None, None])
            self.head.weight.copy_(HEAD[:, :, None, None])

    def forward(self, x):
        return self.pool(self.head(self.mix(self.relu(self.detect(x))))).flatten(1)


def planted_model():
    import featvis

    return featvis.as_model(Superposition().eval(), name="superposition", input_size=32, mean=(0.5, 0.5, 0.5),
                            std=(1.0, 1.0, 1.0), labels=[f"class{i}" for i in range(CLASSES)]).freeze()


def planted_photos(folder: Path, count: int, seed: int = 0) -> dict[str, set[int]]:
    """Write ``count`` photos to ``folder``; returns each photo's path -> the features (patterns) it carries."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    carried = {}
    for n in range(count):
        image = torch.full((3, SIDE, SIDE), 0.5)
        found = set()
        for cy in range(GRID):
            for cx in range(GRID):
                draw = rng.random()
                chosen = [] if draw < 0.6 else list(rng.choice(FEATURES, 1 if draw < 0.9 else 2, replace=False))
                y, x = BORDER + cy * CELL, BORDER + cx * CELL
                for feature in chosen:
                    image[:, y : y + CELL, x : x + CELL] += 0.5 * rng.uniform(0.6, 1.0) * PATTERNS[feature]
                found.update(int(f) for f in chosen)
        path = folder / f"photo{n:04d}.png"
        pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(path)
        carried[str(path)] = found
    return carried
