"""Text data: the builtin sentiment sentences over a fixed embedding table.

`builtin:sentiment` composes sentences from a real sentiment lexicon that ships inside a PyPI
package: AFINN's English word list (`afinn`, AFINN-en-165: 3,382 words with valence -5..+5),
the 712 words of |valence| >= 3 that are one token. A sentence holds one to three lexicon words,
each negated ("not", "no", "never" before it) with probability 0.3, between neutral filler
words; its label is positive where the sum of the (negation-flipped) valences is, negative
where it is negative (a zero sum is drawn again). Train and test sentences are disjoint.

Tokens index a fixed random embedding table (seeded, 100-d, uniform in [0, 1], so that a text's
values share the range every method, decoy and attack assumes); padding is the dictionary's
mean embedding, the papers' "constant" for text. A sample is (token, embedding) float32.
"""

from __future__ import annotations

import hashlib
from functools import cache

import numpy as np
import torch

from ..errors import SalauditError
from .data import Batch, Dataset

SEQ_LEN, EMBED = 16, 100
TRAIN, TEST = 20000, 1500
MIN_VALENCE, NEGATION_P = 3, 0.3
NEGATIONS = ("not", "no", "never")
FILLER = (
    "the", "a", "this", "that", "movie", "film", "story", "plot", "acting", "it", "was", "is",
    "and", "but", "of", "to", "in", "with", "scene", "cast", "ending", "music", "script",
    "director", "felt", "seemed", "quite", "rather", "overall", "just",
)  # fmt: skip
PAD = "<pad>"
SEED = 0


@cache
def lexicon() -> dict[str, int]:
    """AFINN-en-165's single-token words of |valence| >= MIN_VALENCE."""
    from afinn import Afinn

    words = Afinn(language="en")._dict
    return {
        w: int(v)
        for w, v in sorted(words.items())
        if abs(v) >= MIN_VALENCE and w.isalpha() and w not in FILLER + NEGATIONS
    }


@cache
def vocabulary() -> tuple[str, ...]:
    return (PAD, *FILLER, *NEGATIONS, *lexicon())


@cache
def embedding_table() -> np.ndarray:
    """(V, EMBED) float32 in [0, 1]; the padding row is the mean of the others."""
    rng = np.random.default_rng([SEED, 17])
    table = rng.random((len(vocabulary()), EMBED), dtype=np.float32)
    table[0] = table[1:].mean(0)
    return table


def _sentence(rng: np.random.Generator, words: list[str], valence: np.ndarray):
    """(tokens, label, lexicon positions) of one drawn sentence, or None for a zero sum."""
    chunks, total = [], 0
    for j in rng.choice(len(words), size=rng.integers(1, 4), replace=False):
        negated = rng.random() < NEGATION_P
        chunks.append(([str(rng.choice(NEGATIONS))] if negated else []) + [words[j]])
        total += -valence[j] if negated else valence[j]
    if total == 0:
        return None
    used = sum(len(c) for c in chunks)
    filler = list(rng.choice(FILLER, size=rng.integers(max(0, 6 - used), SEQ_LEN - used + 1)))
    cuts = np.sort(rng.integers(0, len(filler) + 1, size=len(chunks)))
    tokens, at = [], 0
    for cut, chunk in zip(cuts, chunks, strict=True):
        tokens += filler[at:cut] + chunk
        at = cut
    tokens += filler[at:]
    return tuple(tokens), int(total > 0)


@cache
def sentences() -> dict[str, np.ndarray]:
    """Token ids (N, SEQ_LEN), labels and padding masks of the train and test splits."""
    lex = lexicon()
    words, valence = list(lex), np.array(list(lex.values()))
    index = {w: i for i, w in enumerate(vocabulary())}
    rng = np.random.default_rng([SEED, 23])
    seen: dict[tuple, int] = {}
    while len(seen) < TRAIN + TEST:
        drawn = _sentence(rng, words, valence)
        if drawn is not None:
            seen.setdefault(*drawn)
    out = {}
    items = list(seen.items())
    for split, part in (("train", items[:TRAIN]), ("test", items[TRAIN:])):
        ids = np.zeros((len(part), SEQ_LEN), dtype=np.int64)
        for r, (tokens, _) in enumerate(part):
            ids[r, : len(tokens)] = [index[t] for t in tokens]
        out[f"ids_{split}"] = ids
        out[f"y_{split}"] = np.array([y for _, y in part], dtype=np.int64)
    return out


class TextDataset(Dataset):
    """Token ids (N, T) over an embedding table (V, D) in [0, 1], with labels and a padding
    mask (N, T; True on real tokens); a sample is its tokens' embeddings (T, D), its words and
    its mask."""

    has_boxes = False

    def __init__(
        self, ids, padding, labels, table, words, num_classes, tag, names=None, references=None
    ):
        self.ids, self.padding = np.asarray(ids, dtype=np.int64), np.asarray(padding, dtype=bool)
        self.labels_, self.table = labels, torch.from_numpy(np.asarray(table, dtype=np.float32))
        self.words = list(words)
        check_text(self.ids, self.padding, self.table, tag)
        self.num_classes, self.class_names, self.tag = num_classes, names, tag
        self.image_shape = (ids.shape[1], table.shape[1])
        self._references = references

    def __len__(self) -> int:
        return len(self.ids)

    def labels(self) -> np.ndarray:
        return self.labels_

    def tokens(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The words (B, T) (padding as "") and the padding mask (B, T) of samples."""
        ids, real = self.ids[indices], self.padding[indices]
        words = np.asarray(self.words, dtype=object)[ids]
        return np.where(real, words, "").astype(str), real

    def _load(self, indices: np.ndarray) -> Batch:
        x = self.table[torch.from_numpy(self.ids[indices])]
        words, padding = self.tokens(indices)
        return Batch(indices, x, torch.from_numpy(self.labels_[indices]), None, words, padding)

    def _fingerprint(self) -> str:
        h = hashlib.sha256(self.tag.encode())
        for arr in (self.ids, self.padding, self.labels_, self.table.numpy()):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update("\n".join(self.words).encode())
        return h.hexdigest()

    @property
    def mean_input(self) -> torch.Tensor:
        """The dictionary's mean embedding (D,): the text's baseline b."""
        return self.table[1:].mean(0)


def check_text(ids: np.ndarray, padding: np.ndarray, table: torch.Tensor, tag: str) -> None:
    """Refuse token ids outside the table, a mask of another shape, or embeddings that are
    not finite values in [0, 1]."""
    if padding.shape != ids.shape:
        raise SalauditError(
            f"{tag}: the padding mask has shape {padding.shape}, the token ids {ids.shape}; "
            "give one mask entry per token (True on real tokens)"
        )
    bad = (ids < 0) | (ids >= len(table))
    if bad.any():
        raise SalauditError(
            f"{tag}: token ids {sorted(set(ids[bad].tolist()))[:5]} are outside the embedding "
            f"table's {len(table)} rows; index the table from 0"
        )
    if not torch.isfinite(table).all() or table.min() < 0 or table.max() > 1:
        raise SalauditError(
            f"{tag}: embeddings must be finite and in [0, 1] (they hold [{table.min():.4g}, "
            f"{table.max():.4g}]); MinMax-scale the table over its entries"
        )


def zarr_text(group, tag: str) -> TextDataset:
    """A Zarr group's text: `token` (N, T) ids into `embedding` (V, D), `padding` (N, T),
    `label` (N,); words from the group's `vocabulary` attribute where it has one."""
    from .data import _class_indices

    if "padding" not in group.array_keys():
        raise SalauditError(
            f"{tag} has token ids but no padding mask: sequences of different lengths cannot be "
            "told from padding without one; add padding (N, T) bool, True on real tokens"
        )
    labels = _class_indices(group["label"][:], tag)
    table = group["embedding"][:]
    words = group.attrs.get("vocabulary") or [str(i) for i in range(len(table))]
    names = group.attrs.get("classes")
    return TextDataset(
        group["token"][:],
        group["padding"][:],
        labels,
        table,
        words,
        int(group.attrs.get("num_classes", labels.max() + 1)),
        tag,
        names=[str(n) for n in names] if isinstance(names, list) else None,
    )


def builtin_text(split: str) -> TextDataset:
    s = sentences()
    refs = builtin_text("train") if split == "test" else None
    return TextDataset(
        s[f"ids_{split}"],
        s[f"ids_{split}"] > 0,
        s[f"y_{split}"],
        embedding_table(),
        vocabulary(),
        2,
        f"sentiment:{split}",
        names=["negative", "positive"],
        references=refs,
    )
