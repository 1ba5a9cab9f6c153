"""A run: a spec with its model, data, resolved methods, selected samples and open store,
which every stage fills regions of."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..attacks.catalogue import attack_info, attacks
from ..engine.batching import parse_bytes, size_micro_batch
from ..errors import SalauditError
from ..inputs.data import Dataset, load_dataset
from ..inputs.kinds import check_kind, describe, kind_of
from ..inputs.models import PixelModel, load_model
from ..methods.boundary_search import BoundaryConfig
from ..methods.decoys import DecoyConfig
from ..methods.registry import Method
from ..metrics.catalogue import families
from ..store import integrity, schema
from ..store.store import Store
from .spec import AuditSpec

REFERENCE_IMAGES = 64  # baselines of expected gradients drawn from the data


@dataclass
class Run:
    """A prepared run: loaded model and data, resolved methods, selected samples, open store."""

    spec: AuditSpec
    model: PixelModel
    dataset: Dataset
    methods: list[Method]
    samples: np.ndarray
    store: Store
    device: torch.device
    micro_batch: int
    references: torch.Tensor | None
    repaired: list[str] = field(default_factory=list)  # integrity problems found and undone
    _markers: dict = field(default_factory=dict, repr=False)

    @property
    def regions(self) -> list[tuple[int, int]]:
        n, size = len(self.samples), self.store.attrs()["shard_size"]
        return [(s, min(s + size, n)) for s in range(0, n, size)]

    def keys(self, start: int, stop: int, name: str) -> list[str]:
        """Random keys for samples [start, stop) and a method or decoy generator `name`."""
        return [f"{self.spec.seed}/{int(i)}/{name}" for i in self.samples[start:stop]]

    def decoy_configs(self) -> list[DecoyConfig]:
        return list(dict.fromkeys(m.decoys for m in self.methods if m.decoys))

    def boundary_config(self) -> BoundaryConfig | None:
        """The boundary search the run's boundary methods share (None if none is asked for)."""
        return next((m.boundary for m in self.methods if m.boundary), None)

    def read(self, path: str, start: int, stop: int) -> torch.Tensor:
        """Samples [start, stop) of the array at `path`, on the run's device; values that do not
        hold what the region's done-marker recorded are an IntegrityError, never read on."""
        values = self.store.read(path, start, stop)
        stage = schema.marker_of(path)
        if stage is not None:
            key = (stage, start, stop)
            if key not in self._markers:
                found = self.store.marker(*key)
                if found is None:
                    return torch.from_numpy(values).to(self.device)
                self._markers[key] = found
            integrity.check_region(self.store, path, start, stop, values, self._markers[key])
        return torch.from_numpy(values).to(self.device)

    def inputs(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored images and targets (clean predictions) of samples [start, stop)."""
        x = self.read(schema.inputs("image"), start, stop)
        return x, self.read(schema.inputs("prediction"), start, stop)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SalauditError("--device cuda asked for, but torch finds no CUDA device; use cpu")
    return torch.device(name)


def load_parts(spec: AuditSpec, progress: bool, attacks: bool = False):
    """(device, model, dataset, resolved methods) of a spec, checked against each other (and
    the spec's attacks, with `attacks`, against the model's kind of input)."""
    device = resolve_device(spec.device)
    model = load_model(spec.model, device=device, progress=progress)
    model.precision = spec.precision
    dataset = load_dataset(spec.data)
    check_fit(spec, dataset.image_shape, model.input_shape)
    methods = [spec.method(name).resolved(model) for name in spec.methods]
    check_kinds(spec, model.kind, attacks)
    return device, model, dataset, methods


def check_kinds(spec: AuditSpec, kind: str, with_attacks: bool = True) -> None:
    """Refuse metrics asked for by name (and with `with_attacks` the spec's attacks) that do
    not apply to `kind` inputs."""
    for name in spec.attacks if with_attacks else []:
        check_attack_kind(name, kind)
    catalogue = families()
    usable = [n for n, f in catalogue.items() if kind in f.kinds]
    for name in spec.metrics or []:
        if name in catalogue:
            check_kind(kind, catalogue[name].kinds, f"metric {name}", usable)


def check_attack_kind(name: str, kind: str) -> None:
    """Refuse attack `name` on `kind` inputs where it does not apply, naming those that do."""
    usable = [a for a, info in attacks().items() if kind in info.kinds]
    check_kind(kind, attack_info(name).kinds, f"attack {name}", usable)


def check_fit(spec: AuditSpec, data_shape: tuple, model_shape: tuple) -> None:
    """Refuse data whose images the model cannot take, naming the fix for that data."""
    if tuple(data_shape) == tuple(model_shape):
        return
    if kind_of(data_shape) != "image" or kind_of(model_shape) != "image":
        raise SalauditError(
            f"{spec.data} has {describe(data_shape)}, model {spec.model} takes "
            f"{describe(model_shape)}; give data and a model of one kind and shape"
        )
    folder = spec.data.startswith("folder:")
    if data_shape[0] != model_shape[0]:
        mode = {1: "L", 3: "RGB"}.get(model_shape[0])
        fix = (
            f"add ?mode={mode} to the folder spec"
            if folder and mode
            else f"give images with {model_shape[0]} channel(s)"
        )
    elif folder:
        fix = f"add ?resize={model_shape[1]}&crop={model_shape[1]} (or sizes that end there)"
    else:
        fix = f"give images of {model_shape[1]}x{model_shape[2]} pixels"
    raise SalauditError(
        f"{spec.data} has images of shape {tuple(data_shape)}, model {spec.model} takes "
        f"{tuple(model_shape)}; {fix}"
    )


def make_run(spec, model, dataset, methods, samples, store, device) -> Run:
    refs = None
    if any(m.info.needs_references for m in methods):
        refs = dataset.references(REFERENCE_IMAGES, spec.seed).to(device)
    micro_batch = spec.micro_batch
    if micro_batch == "auto":
        budget = parse_bytes(spec.memory_budget) if spec.memory_budget else None
        micro_batch = size_micro_batch(model, device, budget).rows
    return Run(spec, model, dataset, methods, samples, store, device, micro_batch, refs)


def attach(spec: AuditSpec, micro_batch: int | None = None, identity: dict | None = None) -> Run:
    """The run of a store that `explain.prepare` laid out, rebuilt read-only: what a worker
    needs to fill regions. Samples come from the store; another model's or data's store is
    refused (the data's fingerprint taken from `identity`, which the flow computed, where
    given: a whole pass over the data once per audit, not once per worker)."""
    device, model, dataset, methods = load_parts(spec, progress=False)
    store = Store(spec.store.url, spec.storage_options())
    if not store.exists():
        raise SalauditError(f"there is no store at {spec.store.url}; prepare the run first")
    data = (identity or {}).get("data_fingerprint") or dataset.fingerprint
    store.check_identity(
        {
            "model_fingerprint": model.fingerprint,
            "data_fingerprint": data,
            "precision": spec.precision,
            "store_dtype": spec.store.dtype,
        }
    )
    samples = store.read(schema.inputs("sample"))
    run = make_run(spec, model, dataset, methods, samples, store, device)
    if micro_batch:
        run.micro_batch = micro_batch
    return run
