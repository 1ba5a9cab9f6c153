"""Training of the builtin models, once per machine, cached atomically.

Training runs on the CPU with a fixed thread count and seed, so it gives the same weights each
time it runs on a machine; a file lock keeps concurrent first uses from training twice.
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from .kinds import stat_dims, stat_shape
from .uris import cache_dir

RECIPE_VERSION = "v2"
TRAIN_THREADS = 2
TRAIN_SEED = 0
BATCH = 128
MAX_LR = 0.2


def builtin_checkpoint(name: str, progress: bool = True) -> dict:
    """The cached checkpoint of builtin model `name`, trained first if missing."""
    path = cache_dir() / "models" / f"{name}-{RECIPE_VERSION}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            ckpt = train_builtin(name, progress=progress)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(fd)
            torch.save(ckpt, tmp)
            os.replace(tmp, path)
    return torch.load(path, map_location="cpu", weights_only=True)


def train_builtin(name: str, progress: bool = True) -> dict:
    from .models import BUILTIN_MODELS

    info = BUILTIN_MODELS[name]
    ds, (x, y) = _tensors(info.data, "train")
    dims = stat_dims(info.input_shape)
    mean, std = getattr(ds, "mean_input", x.mean(dim=dims)), x.std(dim=dims).clamp_min(1e-3)
    names = ds.class_names
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        torch.manual_seed(TRAIN_SEED)
        net = info.build()
        _fit(net, _normalised(x, mean, std), y, progress, name, info.epochs)
        _, (xt, yt) = _tensors(info.data, "test")
        accuracy = _accuracy(net, _normalised(xt, mean, std), yt)
    finally:
        torch.set_num_threads(threads)
    if progress:
        print(f"salaudit: trained builtin:{name}, test accuracy {accuracy:.2%}", file=sys.stderr)
    return {
        "state_dict": net.state_dict(),
        "mean": mean,
        "std": std,
        "test_accuracy": torch.tensor(accuracy),
        "recipe": RECIPE_VERSION,
        **({"classes": names} if names else {}),
    }


def _tensors(data: str, split: str):
    """A builtin data set's split and (every input, its labels)."""
    from .data import load_dataset

    ds = load_dataset(f"builtin:{data}?split={split}")
    batch = ds.load(np.arange(len(ds)))
    return ds, (batch.image, batch.label)


def _normalised(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    shape = stat_shape(tuple(x.shape[1:]))
    return (x - mean.view(shape)) / std.view(shape)


def _fit(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, progress: bool, name: str, epochs: int
) -> None:
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(TRAIN_SEED)
    steps = epochs * int(np.ceil(len(x) / BATCH))
    opt = torch.optim.SGD(
        net.parameters(), lr=MAX_LR, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=MAX_LR, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    net.train()
    bar = tqdm(total=steps, desc=f"training builtin:{name}", disable=not progress, unit="batch")
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            idx = order[i : i + BATCH]
            loss = loss_fn(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    net.eval()


@torch.no_grad()
def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    pred = torch.cat([net(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return float((pred == y).float().mean())
