"""Pruned concatenations (`featvis.optvis.pruning`): which blocks are found to concatenate their
children, which channels objectives declare, and a pruned render of GoogLeNet's mixed4a equal to
the unpruned one (PyTorch running every branch) bit for bit, without running the unread branches."""

from __future__ import annotations

import torch
from torch import nn

import featvis
from featvis.optvis import channel, deepdream, direction, diversity, interpolate, neuron, render
from featvis.optvis import pruning
from featvis.optvis.pruning import concat_children, prune


class Block(nn.Module):
    """Three convolution branches joined along channels: as run, reordered, or rectified after."""

    def __init__(self, join: str = "cat"):
        super().__init__()
        self.join = join
        self.a, self.b, self.c = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.a(x), self.b(x), self.c(x)
        if self.join == "reordered":
            return torch.cat([b, a, c], 1)
        joined = torch.cat([a, b, c], 1)
        return joined.relu() if self.join == "relu" else joined


def _net(join: str = "cat") -> featvis.FeatvisModel:
    torch.manual_seed(0)
    return featvis.as_model(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), Block(join), nn.Conv2d(9, 5, 1)), input_size=16)


def test_blocks_found_to_concatenate_their_children_and_no_others():
    assert concat_children(_net(), "1", 16) == (("1.a", 2), ("1.b", 4), ("1.c", 3))
    assert concat_children(_net("reordered"), "1", 16) is None  # not in the order they run
    assert concat_children(_net("relu"), "1", 16) is None  # something after the concatenation
    assert concat_children(_net(), "0", 16) is None  # no children
    joined = featvis.as_model(nn.Sequential(nn.Conv2d(3, 3, 1), Block()), input_size=16, concats={"both": ("1", "0")})
    assert concat_children(joined, "1", 16) is not None and concat_children(joined, "both", 16) is None  # not block 1's
    sequential = featvis.as_model(nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())), input_size=8)
    assert concat_children(sequential, "0", 8) is None
    normed = featvis.as_model(nn.Sequential(nn.BatchNorm2d(3), Block()), input_size=16).train()
    assert concat_children(normed, "1", 16) is not None  # found in eval mode, the model left as it was:
    assert normed.training and int(normed.net[0].num_batches_tracked) == 0  # no statistics updated


def test_objectives_declare_the_channels_they_read():
    assert channel("l", 3).reads("l") == {3} and neuron("l", 5, 1, 1).reads("l") == {5}
    assert (channel("l", 3) - 2 * channel("l", 7)).reads("l") == {3, 7}
    assert (channel("l", 3) + neuron("m", 1)).reads("m") == {1} and channel("l", 3).reads("m") == frozenset()
    assert interpolate(channel("l", 1), channel("l", 2)).reads("l") == {1, 2}
    for whole in (deepdream("l"), direction("l", [1.0, 2.0]), diversity("l"), channel("l", 3) + deepdream("l")):
        assert whole.reads("l") is None


def test_prune_keeps_only_the_branches_read_and_never_a_layer_read_whole():
    net = _net()
    (plan,) = prune(net, ["1"], [channel("1", 0), channel("1", 1)], 16).values()
    assert plan.needed == (True, False, False) and plan.paths == ["1.a"]
    assert prune(net, ["1"], [channel("1", 0), neuron("1", 8)], 16)["1"].paths == ["1.a", "1.c"]
    assert prune(net, ["1"], [channel("1", 0), channel("1", 2), channel("1", 6)], 16) == {}  # every branch read
    assert prune(net, ["1"], [channel("1", 0), deepdream("1")], 16) == {}


def test_pruned_render_equals_the_unpruned_one_bit_for_bit(inceptionv1, monkeypatch):
    """Across the redirected-ReLU steps and the fused ones; the branches holding no rendered channel never run."""
    specs, steps = ["mixed4a:0", "mixed4a:5"], 18
    branches = {name: inceptionv1.net.get_submodule(f"inception4a.{name}") for name in ("branch1", "branch2", "branch3", "branch4")}
    render(inceptionv1, specs, steps=1, size=48, natural=False, progress=False, precision="float32")  # the one-off checks, cached
    runs = {name: 0 for name in branches}
    handles = [module.register_forward_hook(lambda m, i, o, name=name: runs.__setitem__(name, runs[name] + 1))
               for name, module in branches.items()]
    try:
        pruned = render(inceptionv1, specs, steps=steps, size=48, natural=False, progress=False, precision="float32")
    finally:
        for handle in handles:
            handle.remove()
    assert runs["branch1"] == steps + 1 and runs["branch2"] == runs["branch3"] == runs["branch4"] == 0  # + the final measurement
    monkeypatch.setattr(pruning, "concat_children", lambda *args: None)
    full = render(inceptionv1, specs, steps=steps, size=48, natural=False, progress=False, precision="float32")
    for ours, reference in zip(pruned, full):
        assert torch.equal(ours.image, reference.image) and ours.activation == reference.activation
