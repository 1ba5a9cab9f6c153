"""Models: the builtin CNN, torchvision and python specs, wrapping, fingerprints, bad input."""

from __future__ import annotations

import pytest
import torch
import torchvision

from salaudit import load_model
from salaudit.errors import SalauditError
from salaudit.inputs.models import IMAGENET_MEAN, IMAGENET_STD, fingerprint_state
from salaudit.inputs.training import builtin_checkpoint


def test_builtin_model_reaches_95_percent_on_test_scenes(model, dataset):
    b = dataset.load(range(len(dataset)))
    with torch.no_grad():
        pred = torch.cat([model(b.image[i : i + 500]).argmax(1) for i in range(0, 2000, 500)])
    accuracy = (pred == b.label).float().mean().item()
    assert accuracy >= 0.95
    recorded = builtin_checkpoint("digit-scenes-cnn")["test_accuracy"].item()
    assert recorded == pytest.approx(accuracy, abs=1e-6)


def test_builtin_model_has_named_layers_and_fingerprint(model):
    names = model.layer_names()
    assert {"conv1", "pool1", "conv3", "act3", "fc"} <= set(names)
    assert model.default_layer("decoy") == "pool1"
    assert model.fingerprint == fingerprint_state(model.state_dict())
    assert load_model("builtin:digit-scenes-cnn", progress=False).fingerprint == model.fingerprint
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_torchvision_model_from_weights_file_works_in_pixel_space(tmp_path):
    net = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / "r18.pt"
    torch.save(net.state_dict(), path)
    model = load_model(f"torchvision:resnet18?weights={path}&size=64")
    assert model.num_classes == 7 and model.input_shape == (3, 64, 64)
    x = torch.rand(2, 3, 64, 64)
    mean, std = (
        torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
        torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        expected = net.eval()((x - mean) / std)
        assert torch.allclose(model(x), expected, atol=1e-5)
    assert model.default_layer("cam") == "layer4"


def test_torchvision_weights_on_s3(bucket, tmp_path):
    import s3fs

    net = torchvision.models.resnet18(num_classes=3)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    s3fs.S3FileSystem().put(str(tmp_path / "w.pt"), f"{bucket}/w.pt")
    model = load_model(f"torchvision:resnet18?weights={bucket}/w.pt&size=32")
    assert model.num_classes == 3


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path):
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(SalauditError, match="does not fit torchvision:resnet34"):
        load_model(f"torchvision:resnet34?weights={tmp_path / 'r18.pt'}")


def test_a_checkpoint_of_the_builtin_architecture(model, tmp_path):
    ckpt = builtin_checkpoint("digit-scenes-cnn")
    torch.save(ckpt, tmp_path / "same.pt")  # a salaudit checkpoint dict: the same model
    same = load_model(f"builtin:digit-scenes-cnn?weights={tmp_path / 'same.pt'}", progress=False)
    assert same.fingerprint == model.fingerprint
    tuned = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    torch.save(tuned, tmp_path / "tuned.pt")  # a bare state dict
    other = load_model(f"builtin:digit-scenes-cnn?weights={tmp_path / 'tuned.pt'}", progress=False)
    assert other.fingerprint != model.fingerprint
    torch.testing.assert_close(other.net.fc.weight, tuned["fc.weight"], rtol=0, atol=0)
    assert torch.equal(other.mean, model.mean) and torch.equal(other.std, model.std)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(SalauditError, match="does not fit builtin:digit-scenes-cnn"):
        load_model(f"builtin:digit-scenes-cnn?weights={tmp_path / 'r18.pt'}", progress=False)


def test_torchvision_needs_local_weights():
    with pytest.raises(SalauditError, match="nothing is downloaded"):
        load_model("torchvision:resnet18")
    with pytest.raises(SalauditError, match="unknown torchvision architecture 'resnet9'.*resnet18"):
        load_model("torchvision:resnet9?weights=x.pt")


def test_python_factory_model():
    model = load_model("python:support:linear_model")
    assert model.num_classes == 10 and model.input_shape == (3, 32, 32)
    assert not model.normalised and torch.equal(model.baseline_colour, torch.zeros(1, 3, 1, 1))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("builtin:resnet", "valid: builtin:digit-scenes-cnn"),
        ("onnx:model.onnx", "valid forms: builtin:..., torchvision:..., python:..."),
        ("python:support:nothing_here", "cannot import python:support:nothing_here"),
        ("python:support:not_a_classifier?shape=3x8x8", "needs a logit vector"),
    ],
)
def test_bad_model_specs(spec, message):
    with pytest.raises(SalauditError, match=message.replace(".", r"\.")):
        load_model(spec)


def test_unknown_layer_lists_the_layers(model):
    with pytest.raises(SalauditError, match="layer 'pool9' is not in model .* conv1, bn1, act1"):
        model.layer("pool9")
