"""Building blocks (`featvis.explain`): NMF vs scikit-learn, attribution vs exact logit changes of
linear heads, grid placement vs measured receptive fields, and the espresso cup on the coffee photo."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import NMF
from torch import nn

import featvis
from featvis import FeatvisError
from featvis.explain import blocks, compose_grid, explain, nmf, unit_centres


def _low_rank(n: int = 60, m: int = 40, k: int = 5, noise: float = 0.05) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    X = torch.rand(n, k, generator=g, dtype=torch.float64) @ torch.rand(k, m, generator=g, dtype=torch.float64)
    return X + noise * torch.rand(n, m, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("k", [2, 5])
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # its own cap; ours must still match it
def test_nmf_error_matches_sklearn(k):
    X = _low_rank()
    ours = nmf(X, k, seed=0)
    theirs = NMF(n_components=k, init="nndsvda", max_iter=2000, tol=1e-8, random_state=0).fit(X.numpy())
    assert ours.W.min() >= 0 and ours.H.min() >= 0 and ours.W.shape == (60, k) and ours.H.shape == (k, 40)
    assert ours.error == pytest.approx(float(torch.linalg.matrix_norm(X - ours.W @ ours.H)), rel=1e-12)
    assert ours.error <= theirs.reconstruction_err_ * 1.02
    assert ours.relative_error == pytest.approx(ours.error / float(X.norm()))


def test_nmf_deterministic_for_a_seed_and_checks_input():
    X = _low_rank()
    a, b, c = nmf(X, 4, seed=3), nmf(X, 4, seed=3), nmf(X, 4, seed=4)
    assert torch.equal(a.W, b.W) and torch.equal(a.H, b.H)
    assert not torch.equal(a.W, c.W)
    exact = _low_rank(noise=0.0)
    assert nmf(exact, 5, seed=0, max_iter=300).relative_error < 0.02  # a rank-5 non-negative product is (nearly) recovered
    with pytest.raises(FeatvisError, match="negative"):
        nmf(X - 1, 2)
    with pytest.raises(FeatvisError, match="into 41 groups; use 1..40"):
        nmf(X, 41)


class _Net(nn.Module):
    """conv -> relu (``body``, the explained layer) -> linear head: ``mix`` (non-negative 1x1 conv) ->
    global average -> fc. Everything after ``body`` is linear, so g · a is exactly logit(a) - logit(0)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2), nn.ReLU())
        self.mix = nn.Conv2d(12, 10, 1)
        self.mix.weight.data.abs_()
        self.mix.bias.data.abs_()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(10, 5)

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.mix(a)).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


@pytest.fixture(scope="module")
def toy():
    net = _Net().eval()
    model = featvis.as_model(net, input_size=33, labels=list("abcde")).freeze()
    photo = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(2))
    return net, model, photo


def test_attribution_is_the_exact_logit_change_of_a_linear_head(toy):
    net, model, photo = toy
    result = explain(model, photo, "body", target="c", groups=3, earlier="stem", icons=False)
    x = model.prepare(photo)
    with torch.no_grad():
        a = net.body(net.stem(model.normalize(x)))
        zero = net.head(torch.zeros_like(a))[0, 2]
        change = float(net.head(a)[0, 2] - zero)
        _, _, h, w = a.shape
        per_position = torch.zeros(h, w, dtype=torch.float64)
        for y in range(h):
            for xx in range(w):
                only = torch.zeros_like(a)
                only[..., y, xx] = a[..., y, xx]
                per_position[y, xx] = float(net.head(only)[0, 2] - zero)
        groups = result.groups
        per_group = [float(net.head((groups.maps[j, None, None] * groups.directions[j, None, :, None, None]).float())[0, 2] - zero)
                     for j in range(3)]
    assert result.total == pytest.approx(change, rel=1e-5, abs=1e-5)
    assert float(result.attribution.sum()) == pytest.approx(result.total, rel=1e-9, abs=1e-9)  # completeness
    torch.testing.assert_close(result.attribution, per_position, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(groups.attribution, torch.tensor(per_group, dtype=torch.float64), rtol=1e-4, atol=1e-5)
    assert result.residual == pytest.approx(result.total - sum(per_group), abs=1e-4)
    assert result.logit == pytest.approx(float(net.head(a)[0, 2]), rel=1e-5)
    report = result.to_dict()
    assert report["attribution"]["sum"] == pytest.approx(report["attribution"]["total"])
    assert [len(g["map"]) for g in report["groups"]] == [h] * 3 and len(report["groups"][0]["map"][0]) == w


def test_flow_between_layers_is_the_exact_change_of_the_later_groups(toy):
    net, model, photo = toy
    result = explain(model, photo, "mix", target=0, groups=2, earlier="body", icons=False)
    x = model.prepare(photo)
    with torch.no_grad():
        a1 = net.body(net.stem(model.normalize(x)))
        H2 = result.groups.directions.float()
        before = result.earlier

        def presence(a: torch.Tensor) -> torch.Tensor:  # later groups' directions summed over positions
            return torch.einsum("bchw,jc->j", net.mix(a), H2)

        expected = torch.stack([presence((before.maps[i, None, None] * before.directions[i, None, :, None, None]).float())
                                - presence(torch.zeros_like(a1)) for i in range(2)])
    assert result.flow.shape == (2, 2)
    torch.testing.assert_close(result.flow, expected.double(), rtol=1e-4, atol=1e-4)


def test_grid_uses_measured_receptive_field_centres():
    convs = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(4, 4, 3, stride=2, padding=1))
    for conv in convs:
        conv.weight.data.uniform_(0.1, 1.0)  # positive weights: every pixel a unit sees has a gradient
    model = featvis.as_model(convs, input_size=33)
    centres, stride = unit_centres(model, "1", (33, 33))
    assert stride == (4, 4) and centres.shape == (8, 8, 2)
    x = torch.rand(1, 3, 33, 33, requires_grad=True)
    for y, xx in [(1, 1), (3, 5), (6, 6)]:  # measured: the middle of the pixels with a gradient
        (grad,) = torch.autograd.grad(convs(x)[0, :, y, xx].sum(), x)
        rows, cols = grad.abs().sum((0, 1)).nonzero(as_tuple=True)
        assert tuple(centres[y, xx].tolist()) == ((rows.min() + rows.max()).item() / 2, (cols.min() + cols.max()).item() / 2)
    icon = torch.zeros(3, 8, 8)
    icon[0] = 1.0
    canvas = compose_grid(torch.zeros(3, 33, 33), {(3, 5): icon}, centres, stride, zoom=3)
    rows, cols = (canvas[0] > 0.5).nonzero(as_tuple=True)
    assert (rows.float().mean() + 0.5) / 3 - 0.5 == pytest.approx(float(centres[3, 5, 0]), abs=0.5 / 3 + 1e-6)  # centred, to a canvas pixel
    assert (cols.float().mean() + 0.5) / 3 - 0.5 == pytest.approx(float(centres[3, 5, 1]), abs=0.5 / 3 + 1e-6)
    assert rows.max() - rows.min() + 1 == 12  # one stride (4 px) wide


def test_all_icons_in_one_render_call(toy, monkeypatch):
    _, model, photo = toy
    calls = []
    real = blocks.render
    monkeypatch.setattr(blocks, "render", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    result = explain(model, photo, "body", groups=2, top=3, earlier="stem", steps=2, size=16, progress=False)
    active = int((result.acts.norm(dim=0) > 0).sum())
    assert calls == [3 + 2 + 2 + active]
    assert len(result.channel_icons) == 3 and len(result.groups.icons) == 2 and len(result.earlier.icons) == 2
    assert len(result.grid_icons) == active and all(i.shape == (3, 16, 16) for i in result.grid_icons.values())
    assert result.channels == result.acts[:, result.position[0], result.position[1]].topk(3).indices.tolist()
    assert result.position == divmod(int(result.acts.norm(dim=0).argmax()), result.acts.shape[-1])


def test_bad_input(toy):
    _, model, photo = toy
    with pytest.raises(FeatvisError, match="13 groups asked but 'body' has 12 channels"):
        explain(model, photo, "body", groups=13, icons=False)
    with pytest.raises(FeatvisError, match="'fc' has no spatial map"):
        explain(model, photo, "fc", icons=False)
    with pytest.raises(FeatvisError, match="unknown class label 'f'"):
        explain(model, photo, "body", target="f", icons=False)
    with pytest.raises(FeatvisError, match="earlier layer 'mix' must be a spatial layer that runs before 'body'"):
        explain(model, photo, "body", earlier="mix", icons=False)
    with pytest.raises(FeatvisError, match="position 9,0 is outside body's 7x7 map"):
        explain(model, photo, "body", position=(9, 0), icons=False)


def test_espresso_attribution_lies_in_the_cup(inceptionv1, coffee):
    from test_saliency import _cup_box

    result = explain(inceptionv1, coffee, "mixed4d", target="espresso", icons=False)
    assert (result.target, result.label) == (967, "espresso") and result.earlier.layer == "mixed4a"
    y0, x0, y1, x1 = _cup_box(result.image)
    best = divmod(int(result.attribution.argmax()), result.attribution.shape[-1])
    cy, cx = result.centres[best].tolist()
    assert y0 <= cy < y1 and x0 <= cx < x1
    top = int(result.groups.attribution.argmax())
    peak = divmod(int(result.groups.maps[top].argmax()), result.attribution.shape[-1])
    cy, cx = result.centres[peak].tolist()
    assert y0 <= cy < y1 and x0 <= cx < x1
    assert float(result.attribution.sum()) == pytest.approx(result.total, rel=1e-9)
    # NMF of a real layer: as good as scikit-learn's on the same 196 x 528 matrix
    X = result.acts.reshape(result.acts.shape[0], -1).T.double()
    theirs = NMF(n_components=6, init="nndsvda", max_iter=1000, tol=1e-6, random_state=0).fit(X.numpy())
    assert result.groups.nmf.error <= theirs.reconstruction_err_ * 1.02
