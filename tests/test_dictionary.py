"""Sparse dictionaries: recovery of planted features, the metrics by hand, the layer they make, and the
engines (examples, render, circuits, describe) on features, against plain PyTorch and the planted truth."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
import torch.nn.functional as F

import featvis
from featvis.dictionary import Dictionary, attach_dictionary, load_dictionary, train_dictionary
from featvis.dictionary.build import evaluation_photos
from dictionary_nets import CELL, DIRECTIONS, HEAD, planted_model, planted_photos

SETTINGS = dict(features=64, k=2, steps=800, batch=512, lr=3e-3, workers=0, progress=False)
PHOTOS = 120


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted net, its photos (path -> features carried) and a dictionary of ``mix`` trained on them."""
    root = tmp_path_factory.mktemp("planted")
    carried = planted_photos(root / "photos", PHOTOS)
    model = planted_model()
    dictionary = train_dictionary(model, root / "photos", "mix", samples=PHOTOS * 64, out=root / "dictionary", **SETTINGS)
    return model, root, carried, dictionary


def matches(dictionary: Dictionary) -> torch.Tensor:
    """[32]: for each planted feature, the dictionary feature closest to its direction."""
    return (DIRECTIONS @ dictionary.decoder.T).argmax(1)


def test_recovers_the_planted_directions_no_neuron_carries(planted):
    _, _, _, dictionary = planted
    cosine = (DIRECTIONS @ dictionary.decoder.T).max(1).values
    assert int((cosine >= 0.9).sum()) >= 0.9 * len(DIRECTIONS)
    assert float(DIRECTIONS.abs().max()) < 0.75  # the best single neuron's cosine with any planted direction
    assert torch.allclose(dictionary.decoder.norm(dim=1), torch.ones(dictionary.features), atol=1e-5)


def _by_hand(dictionary: Dictionary, acts: torch.Tensor) -> torch.Tensor:
    """TopK(ReLU(W (x - b_dec) + b_enc)) at every position of [B, C, H, W], from the tensors alone."""
    x = acts.permute(0, 2, 3, 1)
    z = (x - dictionary.decoder_bias) @ dictionary.encoder.T + dictionary.encoder_bias
    values, indices = z.topk(dictionary.k, dim=-1)
    return torch.zeros_like(z).scatter(-1, indices, values.clamp(min=0)).permute(0, 3, 1, 2)


def test_metrics_equal_a_by_hand_computation(planted):
    model, root, _, dictionary = planted
    paths = evaluation_photos(sorted(str(p) for p in (root / "photos").glob("*.png")))  # held out of training
    x = torch.cat([model.prepare(featvis.load_image(p)) for p in paths])
    net = model.net
    with torch.no_grad():
        mix = net.mix(net.relu(net.detect(x - 0.5)))
        features = _by_hand(dictionary, mix)
        assert torch.allclose(dictionary.encode(mix), features, atol=1e-5)
        assert int((features > 0).sum(1).max()) <= dictionary.k
        recon = torch.einsum("bnhw,nc->bchw", features, dictionary.decoder) + dictionary.decoder_bias[:, None, None]
        logits = {kind: net.pool(net.head(value)).flatten(1) for kind, value in
                  (("original", mix), ("reconstructed", recon), ("zero", torch.zeros_like(mix)))}
    target = logits["original"].argmax(1)
    ce = {kind: float(F.cross_entropy(value, target)) for kind, value in logits.items()}
    info = dictionary.info
    assert info["agreement"] == pytest.approx(float((logits["reconstructed"].argmax(1) == target).float().mean()))
    assert info["loss_recovered"] == pytest.approx(1 - (ce["reconstructed"] - ce["original"]) / (ce["zero"] - ce["original"]),
                                                   abs=1e-4)
    assert info["l0"] <= dictionary.k and 0 <= info["dead"] < dictionary.features
    vectors = mix.permute(0, 2, 3, 1).reshape(-1, mix.shape[1])  # every position of the held-out photos
    fvu = float((vectors - recon.permute(0, 2, 3, 1).reshape(-1, mix.shape[1])).pow(2).sum() /
                (vectors - vectors.mean(0)).pow(2).sum())
    assert abs(info["fvu"] - fvu) < 0.02 and fvu < 0.1


def test_saved_dictionary_loads_the_same_and_runs_no_code(planted, tmp_path):
    _, root, _, dictionary = planted
    loaded = load_dictionary(root / "dictionary")
    for name in ("encoder", "encoder_bias", "decoder", "decoder_bias"):
        assert torch.equal(getattr(loaded, name), getattr(dictionary, name))
    assert (loaded.layer, loaded.k, loaded.info["fvu"]) == ("mix", 2, dictionary.info["fvu"])
    copy = tmp_path / "copy"
    copy.mkdir()
    settings = json.loads((root / "dictionary" / "dictionary.json").read_text())

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    (copy / "dictionary.pt").write_bytes(pickle.dumps({"decoder": Payload()}))
    (copy / "dictionary.json").write_text(json.dumps(settings))
    with pytest.raises(featvis.FeatvisError, match="SHA-256"):
        load_dictionary(copy)
    import hashlib

    settings["sha256"] = hashlib.sha256((copy / "dictionary.pt").read_bytes()).hexdigest()
    (copy / "dictionary.json").write_text(json.dumps(settings))
    with pytest.raises(featvis.FeatvisError, match="cannot read"):
        load_dictionary(copy)


def test_attached_layer_is_the_encoding_and_leaves_the_model_alone(planted):
    model, root, _, dictionary = planted
    before = [name for name, _ in model.net.named_modules()]
    attached = attach_dictionary(model, root / "dictionary")
    assert [name for name, _ in model.net.named_modules()] == before and not model.net.mix._forward_hooks
    assert "mix_features" in attached.layer_names()
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    acts = featvis.capture(attached, x, ["mix", "mix_features", "mix_features_pre_relu"])
    assert torch.equal(acts["mix_features"], _by_hand(dictionary, acts["mix"])) or \
        torch.allclose(acts["mix_features"], _by_hand(dictionary, acts["mix"]), atol=1e-5)
    assert torch.equal(acts["mix_features"], F.relu(acts["mix_features"]) * (acts["mix_features"] > 0))
    original, with_features = model(x), attached(x)
    assert torch.equal(original, with_features)
    grad_a, = torch.autograd.grad(original[:, 3].sum(), x)
    grad_b, = torch.autograd.grad(attached(x)[:, 3].sum(), x)
    assert torch.equal(grad_a, grad_b)
    # a second dictionary, of another layer, trained on the same model: no warning, both layers
    directions = F.normalize(torch.randn(40, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    other = Dictionary("relu", directions.clone(), torch.zeros(40), directions, torch.zeros(32), k=3,
                       info={"fingerprint": dictionary.info["fingerprint"]})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        both = attach_dictionary(attached, other)
    acts = featvis.capture(both, x, ["relu", "relu_features", "mix", "mix_features"])
    assert torch.allclose(acts["relu_features"], _by_hand(other, acts["relu"]), atol=1e-5)
    assert torch.allclose(acts["mix_features"], _by_hand(dictionary, acts["mix"]), atol=1e-5)


def test_examples_of_a_feature_are_the_photos_carrying_its_pattern(planted, tmp_path):
    model, root, carried, dictionary = planted
    attached = attach_dictionary(model, dictionary)
    pairs = [(int(f), planted_index) for planted_index, f in enumerate(matches(dictionary)[:6])]
    result = featvis.dataset_examples(attached, root / "photos", "mix_features", tmp_path,
                                      channels=",".join(str(f) for f, _ in pairs), k=5, workers=0, crops=False,
                                      progress=False)
    per_channel = result.summary["layers"]["mix_features"]
    for feature, planted_index in pairs:
        entries = per_channel[str(feature)]
        assert len(entries) == 5
        assert all(planted_index in carried[entry["path"]] for entry in entries), (feature, planted_index)
        y0, x0, y1, x1 = entries[0]["box"]
        assert (y1 - y0, x1 - x0) == (CELL, CELL)  # one cell: the feature's field is its pattern's


def test_rendered_feature_drives_it_more_than_any_photo(planted):
    model, root, _, dictionary = planted
    attached = attach_dictionary(model, dictionary)
    feature = int(matches(dictionary)[0])
    # no jitter: the planted patterns sit on a 4 px grid that a shift of the picture would break
    result, = featvis.render(attached, f"mix_features:{feature}", steps=48, size=32, transforms="none", progress=False)
    photos = torch.cat([model.prepare(featvis.load_image(p)) for p in sorted((root / "photos").glob("*.png"))])
    best_photo = float(featvis.capture(attached, photos, ["mix_features"])["mix_features"][:, feature].mean((1, 2)).max())
    rendered = featvis.capture(attached, result.image[None], ["mix_features"])["mix_features"][0, feature].mean()
    assert result.activation == pytest.approx(float(rendered), rel=1e-4)
    assert float(rendered) > 5 * best_photo > 0


def test_circuits_to_and_from_features_are_the_weights_multiplied_by_hand(planted):
    model, _, _, dictionary = planted
    attached = attach_dictionary(model, dictionary)
    into = featvis.expanded_weights(attached, "relu", "mix_features")  # [N, 32, 1, 1]
    mix = model.net.mix.weight[:, :, 0, 0].double()  # [16, 32]
    assert torch.allclose(into[:, :, 0, 0], dictionary.encoder.double() @ mix, atol=1e-9)
    out = featvis.expanded_weights(attached, "mix_features", "head")  # [8, N, 1, 1]
    assert torch.allclose(out[:, :, 0, 0], HEAD.double() @ dictionary.decoder.double().T, atol=1e-9)


def test_describe_names_the_class_the_head_makes_each_feature_drive(planted):
    from featvis.explain.describe import describe

    model, root, _, dictionary = planted
    attached = attach_dictionary(model, dictionary)
    features = [int(f) for f in matches(dictionary)[:4]]
    by_hand = HEAD @ dictionary.decoder.T  # [8, N]: the head's logit per unit of each feature, at every position
    for photos in (None, root / "photos"):
        described = describe(attached, [f"mix_features:{f}" for f in features], photos, top=3, workers=0)
        for f, description in zip(features, described):
            index, _, value = description.promotes[0]
            assert index == int(by_hand[:, f].argmax()) and value == pytest.approx(float(by_hand[:, f].max()), rel=1e-4)
            assert description.loads["neurons"] == [c for c in dictionary.decoder[f].abs().argsort(descending=True).tolist()
                                                    if abs(dictionary.decoder[f, c]) >= 0.3]
    neuron, = describe(attached, ["mix:5"])
    assert neuron.loads["polysemanticity"] == int((dictionary.decoder[:, 5].abs() >= 0.3).sum())


def test_real_googlenet_mixed4c_dictionary_reconstructs_and_keeps_the_predictions(inceptionv1, tmp_path):
    from featvis.examples import sample_collection

    sample_collection(tmp_path / "photos", 20, size=224, seed=0)
    dictionary = train_dictionary(inceptionv1, tmp_path / "photos", "mixed4c", features=512, k=16, samples=20 * 196,
                                  steps=200, batch=256, workers=0, progress=False)
    info = dictionary.info
    assert info["samples"] == 20 * 196 and info["held_out"] == 2 * 196
    assert info["fvu"] < 0.5 and info["l0"] <= 16 and info["loss_recovered"] > 0.5, info
    attached = attach_dictionary(inceptionv1, dictionary)
    x = inceptionv1.prepare(featvis.load_image(sorted((tmp_path / "photos").rglob("*.png"))[0]))
    acts = featvis.capture(attached, x, ["mixed4c", "mixed4c_features"])
    assert acts["mixed4c_features"].shape == (1, 512, 14, 14)
    assert torch.allclose(acts["mixed4c_features"], _by_hand(dictionary, acts["mixed4c"]), atol=1e-3)
    assert torch.equal(attached(x), inceptionv1(x))


def test_a_dictionary_of_one_call_of_a_shared_activation(tmp_path):
    """``act#2_features`` on a net whose one ReLU module runs three times: the features of the second call, checked
    against the same net written with one module per call."""
    from featvis.examples import sample_collection
    from test_shared_modules import _pair

    shared, unshared = _pair()
    sample_collection(tmp_path / "photos", 12, size=32, seed=2)
    dictionary = train_dictionary(shared, tmp_path / "photos", "act#2", features=10, k=2, samples=12 * 49, steps=60,
                                  batch=128, workers=0, progress=False)
    attached = attach_dictionary(shared, dictionary)
    assert "act#2_features" in attached.aliases and "act#2_features_pre_relu" in attached.aliases
    x = torch.rand(2, 3, 32, 32)
    features = featvis.capture(attached, x, ["act#2_features"])["act#2_features"]
    assert torch.allclose(features, _by_hand(dictionary, featvis.capture(unshared, x, ["act2"])["act2"]), atol=1e-5)
    assert torch.equal(attached(x), shared(x))
    result, = featvis.render(attached, "act#2_features:1", steps=4, size=32, progress=False)
    assert result.activation == pytest.approx(float(featvis.capture(attached, result.image[None], ["act#2_features"])
                                                    ["act#2_features"][0, 1].mean()), rel=1e-4, abs=1e-6)
    out = featvis.expanded_weights(attached, "act#2_features", "conv3")  # [6, 10, 3, 3]
    by_hand = torch.einsum("tchw,nc->tnhw", unshared.net.conv3.weight.double(), dictionary.decoder.double())
    assert torch.allclose(out, by_hand, atol=1e-9)
