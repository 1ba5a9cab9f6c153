"""Models: `load_model(spec)` for builtin, torchvision and python-factory classifiers.

Every model is wrapped as a `PixelModel`: it takes images in pixel space [0, 1] and applies the
network's input normalisation itself, so every method works in pixel space.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import SalauditError
from .kinds import from_grid, grid_shape, kind_of, stat_shape, to_grid
from .spec_strings import SpecString, parse_shape
from .uris import filesystem

MODEL_KINDS = ("builtin", "torchvision", "python")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PixelModel(nn.Module):
    """A classifier on inputs in [0, 1] (images in pixel space, MinMax-scaled tables) that
    returns logits.

    `mean` and `std` are the network's input normalisation (per channel of an image, per
    feature of a table); `mean` doubles as the baseline b of METHODS.md (an image's mean
    colour, a table's feature means). `layers` names default layers per use ("decoy", "cam") as
    module paths inside `net`.
    """

    value_range = (0.0, 1.0)

    def __init__(
        self,
        net: nn.Module,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        layers: dict[str, str] | None = None,
        spec: str = "",
        class_names: list[str] | None = None,
    ):
        super().__init__()
        shape = stat_shape(tuple(input_shape))
        n = math.prod(shape)
        self.net = net
        self.register_buffer("mean", torch.tensor(mean or (0.0,) * n).view(shape))
        self.register_buffer("std", torch.tensor(std or (1.0,) * n).view(shape))
        self.normalised = mean is not None or std is not None
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.default_layers = dict(layers or {})
        self.class_names = list(class_names) if class_names else None  # logit i's class
        self.spec = spec
        self.fingerprint = ""
        self.precision = "fp32"  # PRECISIONS: the network's forward under autocast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits in fp32; with a precision other than fp32, the network runs under autocast
        (its inputs, and so every gradient w.r.t. them, stay fp32)."""
        z = (x - self.mean) / self.std
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return self.net(z)
        with torch.autocast(z.device.type, dtype=dtype):
            out = self.net(z)
        return out.float()

    @property
    def kind(self) -> str:
        """The input kind: image, table or text (`inputs.kinds`)."""
        return kind_of(self.input_shape)

    @property
    def baseline_colour(self) -> torch.Tensor:
        """The data's mean colour (1, C, 1, 1) in pixel space, or a table's feature means
        (1, F); 0 where unknown."""
        return self.mean if self.normalised else torch.zeros_like(self.mean)

    def layer_names(self) -> list[str]:
        return [name for name, _ in self.net.named_modules() if name]

    def layer(self, name: str) -> nn.Module:
        """The module at path `name` inside the network; the error lists the valid paths."""
        try:
            return self.net.get_submodule(name)
        except AttributeError:
            raise SalauditError(
                f"layer {name!r} is not in model {self.spec or type(self.net).__name__}; "
                f"its layers are: {', '.join(self.layer_names())}"
            ) from None

    def default_layer(self, use: str) -> str:
        """The default layer for `use`: the model's own choice, else the first pooling layer
        ("decoy") or the last convolution ("cam", the class-activation layer)."""
        if use in self.default_layers:
            return self.default_layers[use]
        named = list(self.net.named_modules())
        if use == "decoy":
            pools = [n for n, m in named if isinstance(m, nn.MaxPool2d | nn.AvgPool2d)]
            if pools:
                return pools[0]
        convs = [n for n, m in named if isinstance(m, nn.Conv2d)]
        attention = [n for n, m in named if isinstance(m, nn.MultiheadAttention)]
        if use == "cam" and convs and attention:
            raise SalauditError(
                f"model {self.spec} is a transformer: its last convolution {convs[-1]!r} comes "
                f"before its attention blocks (the patch embedding), where Grad-CAM says "
                "nothing of the class; leave gradcam out of the methods, or name a layer with "
                "(channel, y, x) activations: --param gradcam.layer=<layer>"
            )
        if convs:
            return convs[-1] if use == "cam" else convs[0]
        linears = [n for n, m in named if isinstance(m, nn.Linear)]
        if use == "decoy" and len(linears) > 1:
            return linears[0]  # a dense net's first hidden layer
        raise SalauditError(
            f"model {self.spec} has no default {use} layer; name one of: "
            f"{', '.join(self.layer_names())}"
        )


class OnGrid(PixelModel):
    """A table or text model taking its inputs on the grid of positions (`inputs.kinds`), so
    that code over positions (decoy masks, kept features, explanation attacks) sees every kind
    as (channel, y, x); its mean (the baseline b) is the model's, on the grid."""

    def __init__(self, model: PixelModel):
        nn.Module.__init__(self)
        self.model = model
        self.net = model.net
        self.input_shape = grid_shape(model.input_shape)
        self.num_classes, self.spec = model.num_classes, model.spec
        self.normalised, self.default_layers = model.normalised, model.default_layers
        self.class_names, self.fingerprint = model.class_names, model.fingerprint

    @property
    def precision(self) -> str:
        return self.model.precision

    @property
    def mean(self) -> torch.Tensor:
        return to_grid(self.model.mean.expand(1, *self.model.input_shape))

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.model(from_grid(g, self.model.input_shape))


def on_grid(model: PixelModel) -> PixelModel:
    """`model` on the grid of positions (an image model is its own)."""
    return model if model.kind == "image" else OnGrid(model)


def fingerprint_state(state: dict[str, torch.Tensor]) -> str:
    """sha256 of the weight bytes, names, dtypes and shapes, in key order."""
    h = hashlib.sha256()
    for name, tensor in state.items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def digit_scenes_cnn(num_classes: int = 10) -> nn.Sequential:
    """The default model's network: three conv-BN-SiLU-avgpool blocks and a linear head.

    Smooth on purpose: with ReLU and max pooling the integrand of integrated gradients has a
    kink wherever a unit switches, and 50-step IG misses completeness by 1-5% on half the
    images; with SiLU and average pooling it is exact to 1e-4 (docs/decoys.md has the numbers),
    and the network is twice differentiable for the attacks.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels = (3, 16, 32, 64)
    for i in range(1, 4):
        layers[f"conv{i}"] = nn.Conv2d(channels[i - 1], channels[i], 3, padding=1)
        layers[f"bn{i}"] = nn.BatchNorm2d(channels[i])
        layers[f"act{i}"] = nn.SiLU()
        layers[f"pool{i}"] = nn.AvgPool2d(2)
    layers["flatten"] = nn.Flatten()
    layers["dropout"] = nn.Dropout(0.3)
    layers["fc"] = nn.Linear(64 * 4 * 4, num_classes)
    return nn.Sequential(layers)


def breast_cancer_mlp(features: int = 30, hidden: int = 64, num_classes: int = 2) -> nn.Sequential:
    """The tabular default's network: a two-layer MLP (as the papers' intrusion MLP), SiLU so
    that integrated gradients are exact and the attacks can differentiate twice."""
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(features, hidden), act1=nn.SiLU(), fc2=nn.Linear(hidden, num_classes)
        )
    )


class TextCNN(nn.Module):
    """The text default's network, Kim-style over (batch, token, embedding): two 1-D
    convolutions of width 3 over the tokens with SiLU (`conv1`, `act1`, `conv2`, `act2`), the
    mean over tokens and a linear head; smooth, as the image default, for IG and the attacks."""

    def __init__(self, embed: int = 100, channels: int = 64, num_classes: int = 2):
        super().__init__()
        self.conv1, self.act1 = nn.Conv1d(embed, channels, 3, padding=1), nn.SiLU()
        self.conv2, self.act2 = nn.Conv1d(channels, channels, 3, padding=1), nn.SiLU()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act2(self.conv2(self.act1(self.conv1(x.transpose(1, 2)))))
        return self.fc(h.mean(2))


@dataclass(frozen=True)
class Builtin:
    """A model salaudit trains itself on builtin data (`epochs` of its training recipe)."""

    build: Callable[[], nn.Module]
    data: str
    input_shape: tuple[int, ...]
    num_classes: int
    layers: dict[str, str] = field(default_factory=dict)
    epochs: int = 6


BUILTIN_MODELS = {
    "digit-scenes-cnn": Builtin(
        digit_scenes_cnn, "digit-scenes", (3, 32, 32), 10, {"decoy": "pool1", "cam": "act3"}
    ),
    "breast-cancer-mlp": Builtin(
        breast_cancer_mlp, "breast-cancer", (30,), 2, {"decoy": "act1"}, epochs=100
    ),
    "sentiment-cnn": Builtin(TextCNN, "sentiment", (16, 100), 2, {"decoy": "act1"}, epochs=12),
}
TORCHVISION_LAYERS = {
    "vgg16": {"decoy": "features.4", "cam": "features.29"},
    "alexnet": {"decoy": "features.2", "cam": "features.11"},
    "resnet18": {"decoy": "maxpool", "cam": "layer4"},
    "resnet50": {"decoy": "maxpool", "cam": "layer4"},
}


def load_model(spec: str, device: str | torch.device = "cpu", progress: bool = True) -> PixelModel:
    """Load a classifier in eval mode, wrapped to take pixel-space images.

    `builtin:<name>[?weights=<path or s3 url>]` (trained on first use and cached; `weights`
    loads a checkpoint of the same architecture, the builtin's normalisation kept),
    `torchvision:<arch>?weights=<path or s3 url>[&size=224][&num_classes=N]` (never
    downloaded, loaded with `weights_only=True`) or `python:<module>:<factory>[?shape=3x32x32]`.
    """
    parsed = SpecString.parse(spec, MODEL_KINDS, "model")
    loader = {"builtin": _builtin, "torchvision": _torchvision, "python": _python}[parsed.kind]
    model = loader(parsed, progress)
    model.spec = spec
    model.fingerprint = fingerprint_state(model.state_dict())
    model.eval().requires_grad_(False)
    _check_logits(model)
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)  # ~1.5x faster convs, BN and pools
    return model.to(device)


def _builtin(spec: SpecString, progress: bool) -> PixelModel:
    from .training import builtin_checkpoint

    spec.check_params({"weights"}, "builtin model")
    if spec.target not in BUILTIN_MODELS:
        raise SalauditError(
            f"unknown builtin model {spec.target!r}; valid: "
            + ", ".join(f"builtin:{n}" for n in BUILTIN_MODELS)
        )
    info = BUILTIN_MODELS[spec.target]
    ckpt = builtin_checkpoint(spec.target, progress=progress)
    weights = spec.take("weights")
    state = read_state_dict(weights) if weights else ckpt["state_dict"]
    net = info.build()
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise SalauditError(
            f"weights file {weights} does not fit builtin:{spec.target}: {e}"
        ) from None
    return PixelModel(
        net,
        input_shape=info.input_shape,
        num_classes=info.num_classes,
        mean=tuple(ckpt["mean"].tolist()),
        std=tuple(ckpt["std"].tolist()),
        layers=info.layers,
        class_names=ckpt.get("classes") or [str(i) for i in range(info.num_classes)],
    )


def read_state_dict(url: str) -> dict[str, torch.Tensor]:
    """A state dict from a local path or object-storage URL, loaded with weights_only=True."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        raise SalauditError(f"weights file {url} does not exist")
    if fs.size(path) == 0:
        raise SalauditError(f"weights file {url} is empty (0 bytes); save the state dict again")
    with fs.open(path, "rb") as f:
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:
            raise SalauditError(f"cannot read weights file {url}: {_load_failure(e)}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SalauditError(f"weights file {url} holds no state dict")
    return state


def _load_failure(error: Exception) -> str:
    """Why torch could not load a file, without its advice to load it running its code."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    marker = next((i for i, ln in enumerate(lines) if "WeightsUnpickler error" in ln), None)
    reason = lines[marker + 1] if marker is not None and marker + 1 < len(lines) else None
    reason = reason or (lines[0] if lines else type(error).__name__)
    return (
        f"it is not a state dict of tensors that loads without running code ({reason[:200]}); "
        "salaudit loads weights only: save model.state_dict() with torch.save"
    )


def _torchvision(spec: SpecString, progress: bool) -> PixelModel:
    import torchvision

    spec.check_params({"weights", "size", "num_classes"}, "torchvision model")
    archs = torchvision.models.list_models(module=torchvision.models)
    if spec.target not in archs:
        raise SalauditError(
            f"unknown torchvision architecture {spec.target!r}; valid: {', '.join(archs)}"
        )
    weights = spec.take("weights")
    if not weights:
        raise SalauditError(
            f"torchvision:{spec.target} needs ?weights=<path or s3 url> (nothing is downloaded)"
        )
    state = read_state_dict(weights)
    num_classes = int(spec.take("num_classes") or _classifier_rows(spec.target, state))
    net = torchvision.models.get_model(spec.target, weights=None, num_classes=num_classes)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise SalauditError(
            f"weights file {weights} does not fit torchvision:{spec.target} "
            f"with {num_classes} classes: {e}"
        ) from None
    size = int(spec.take("size") or 224)
    return PixelModel(
        net,
        input_shape=(3, size, size),
        num_classes=num_classes,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        layers=TORCHVISION_LAYERS.get(spec.target),
    )


def _classifier_rows(arch: str, state: dict[str, torch.Tensor]) -> int:
    """The number of classes a state dict's last linear layer outputs (1000 if unclear)."""
    import torchvision

    probe = torchvision.models.get_model(arch, weights=None)
    linears = [n for n, m in probe.named_modules() if isinstance(m, nn.Linear)]
    key = f"{linears[-1]}.weight" if linears else None
    return int(state[key].shape[0]) if key in state else 1000


def _python(spec: SpecString, progress: bool) -> PixelModel:
    spec.check_params({"shape"}, "python model")
    module_name, _, factory_name = spec.target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as e:
        raise SalauditError(
            f"cannot import python:{spec.target} ({e}); write python:<module>:<factory> with the "
            "module importable: put its folder on PYTHONPATH (the workers inherit it)"
        ) from None
    if not callable(factory):
        raise SalauditError(
            f"python:{spec.target} is a {type(factory).__name__}, not a callable factory; name "
            "a function that returns the model"
        )
    try:
        net = factory()
    except Exception as e:
        raise SalauditError(
            f"python:{spec.target} raised {type(e).__name__}: {e}; fix the factory"
        ) from None
    if isinstance(net, PixelModel):
        return net
    if not isinstance(net, nn.Module):
        raise SalauditError(f"python:{spec.target} returned {type(net).__name__}, not a module")
    shape = spec.take("shape") or getattr(net, "input_shape", None)
    if shape is None:
        raise SalauditError(
            f"python:{spec.target}: state the input shape with ?shape=CxHxW (an image), "
            "?shape=F (a table) or ?shape=TxD (tokens by embedding)"
        )
    shape = parse_shape(shape) if isinstance(shape, str) else tuple(shape)
    try:
        with torch.no_grad():
            out = net.eval()(torch.zeros(1, *shape))
    except Exception as e:
        raise SalauditError(
            f"python:{spec.target} cannot take inputs of shape {shape} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); give the shape it takes "
            "with ?shape=CxHxW, ?shape=F or ?shape=TxD"
        ) from None
    names = getattr(net, "classes", None)
    names = [str(n) for n in names] if isinstance(names, list | tuple) else None
    return PixelModel(net, input_shape=shape, num_classes=int(out.shape[-1]), class_names=names)


def _check_logits(model: PixelModel) -> None:
    with torch.no_grad():
        out = model(torch.full((2, *model.input_shape), 0.5))
    if out.ndim != 2 or out.shape != (2, model.num_classes) or model.num_classes < 2:
        raise SalauditError(
            f"model {model.spec} returns shape {tuple(out.shape)} for 2 images; salaudit needs "
            "a logit vector per image, (batch, classes) with at least 2 classes"
        )
