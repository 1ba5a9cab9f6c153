"""Tabular data: the builtin breast-cancer table and user tables (`csv:`, `parquet:`).

Features are float32 in [0, 1] (MinMax-scaled: the papers' intrusion table is, and the attacks'
and decoys' range is [0, 1]); one row per sample, a feature name per column.

The builtin table is scikit-learn's Wisconsin breast-cancer table (569 samples, 30 features,
2 classes; it ships inside scikit-learn, nothing is downloaded). It is chosen over the wine table
(178 samples, 13 features) for more samples to test on and more features to rank, nearer the
83 of the papers' intrusion table. The split is stratified 70/30 with a fixed seed; the scaling
is fit on the training split, and test values are clipped into [0, 1].
"""

from __future__ import annotations

import hashlib
from functools import cache

import numpy as np
import torch

from ..errors import SalauditError
from .data import Batch, Dataset, _class_indices, check_table
from .spec_strings import SpecString
from .uris import filesystem

SPLIT_SEED = 0
TEST_FRACTION = 0.3


class TableDataset(Dataset):
    """An in-memory table (N, F) of float32 features in [0, 1], with labels."""

    has_boxes = False

    def __init__(self, values, labels, features, num_classes, tag, names=None, references=None):
        self.values = np.ascontiguousarray(values, dtype=np.float32)
        check_table(torch.from_numpy(self.values), np.arange(len(self.values)), tag)
        self.labels_ = labels
        self.feature_names = list(features)
        self.num_classes = num_classes
        self.class_names = names
        self.image_shape = (self.values.shape[1],)
        self.tag = tag
        self._references = references

    def __len__(self) -> int:
        return len(self.values)

    def labels(self) -> np.ndarray:
        return self.labels_

    def _load(self, indices: np.ndarray) -> Batch:
        x = torch.from_numpy(self.values[indices])
        return Batch(indices, x, torch.from_numpy(self.labels_[indices]), None)

    def _fingerprint(self) -> str:
        h = hashlib.sha256(self.tag.encode())
        h.update(self.values.tobytes())
        h.update(self.labels_.tobytes())
        h.update(",".join(self.feature_names).encode())
        return h.hexdigest()


@cache
def breast_cancer() -> dict[str, np.ndarray]:
    """The scaled breast-cancer table's splits: x_train, y_train, x_test, y_test, features."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import MinMaxScaler

    table = load_breast_cancer()
    x_tr, x_te, y_tr, y_te = train_test_split(
        table.data,
        table.target,
        test_size=TEST_FRACTION,
        stratify=table.target,
        random_state=SPLIT_SEED,
    )
    scaler = MinMaxScaler().fit(x_tr)
    return {
        "x_train": scaler.transform(x_tr).astype(np.float32),
        "y_train": y_tr.astype(np.int64),
        "x_test": np.clip(scaler.transform(x_te), 0, 1).astype(np.float32),
        "y_test": y_te.astype(np.int64),
        "features": np.array([str(f) for f in table.feature_names]),
        "classes": np.array([str(c) for c in table.target_names]),
    }


def builtin_table(split: str) -> TableDataset:
    t = breast_cancer()
    refs = builtin_table("train") if split == "test" else None
    return TableDataset(
        t[f"x_{split}"],
        t[f"y_{split}"],
        t["features"].tolist(),
        2,
        f"breast-cancer:{split}",
        names=t["classes"].tolist(),
        references=refs,
    )


def user_table(spec: SpecString) -> TableDataset:
    """`csv:<path or url>?label=<column>` or `parquet:...`: every other column is a feature."""
    import pandas as pd

    spec.check_params({"label"}, f"{spec.kind} data")
    label = spec.take("label", "label")
    fs, path = filesystem(spec.target)
    if not fs.exists(path):
        raise SalauditError(f"table {spec.target} does not exist")
    with fs.open(path, "rb") as f:
        frame = pd.read_csv(f) if spec.kind == "csv" else pd.read_parquet(f)
    if label not in frame.columns:
        raise SalauditError(
            f"table {spec.target} has no label column {label!r}; name it with ?label=<column> "
            f"(its columns: {', '.join(map(str, frame.columns[:20]))})"
        )
    labels = _class_indices(frame[label].to_numpy(), spec.target)
    features = frame.drop(columns=[label])
    numeric = features.select_dtypes("number").columns
    text = [c for c in features.columns if c not in numeric]
    if text:
        raise SalauditError(
            f"table {spec.target} has non-numeric feature column(s) {text[:5]}; encode them as "
            "numbers scaled to [0, 1] (e.g. one-hot) or drop them"
        )
    values = features.to_numpy(dtype=np.float32)
    tag = f"{spec.kind}:{spec.target}"
    return TableDataset(values, labels, features.columns.astype(str), int(labels.max()) + 1, tag)
