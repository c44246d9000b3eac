"""Model files the circuit tests write for the CLI: a net with planted connections (shared by
tests/test_cli_circuit.py and tests/test_gallery_circuits.py)."""

PLANTED = '''
import torch
from torch import nn


class Planted(nn.Module):
    """Channel 1 of conv2 reads only channel 5 of conv1; channel 2 of conv3 reads only channel 1 of conv2."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 1)
        self.conv3 = nn.Conv2d(6, 4, 3, padding=1)
        with torch.no_grad():
            self.conv2.weight[1] = 0
            self.conv2.weight[1, 5] = 0.5
            self.conv3.weight[2] = 0
            self.conv3.weight[2, 1] = torch.tensor([[0.0, 1.0, -1.0], [0.0, 2.0, -2.0], [0.0, 1.0, -1.0]])

    def forward(self, x):
        return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
'''
