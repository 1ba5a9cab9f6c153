"""Progress inside long units: rows through the model, counted by a forward pre-hook while a
unit runs, shown as a tqdm bar and handed to a reporter (the flow's Prefect artifact) at most
every few seconds, so a 30-minute shard never looks hung."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch

# report(rows, shards done, shards): what a unit tells its watcher
Reporter = Callable[[int, int, int], None]
REPORT_SECONDS = 10.0


class RowMeter:
    """Counts the rows `model` sees inside a `with` block; `shard_done()` marks a shard."""

    def __init__(
        self,
        model: torch.nn.Module,
        shards: int = 1,
        report: Reporter | None = None,
        bar: bool = False,
        desc: str = "rows",
        every: float = REPORT_SECONDS,
    ):
        self.model, self.shards, self.report, self.every = model, shards, report, every
        self.rows = self.done = 0
        self.bar_wanted, self.desc = bar, desc
        self.shown = time.monotonic()

    def __enter__(self) -> RowMeter:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            desc=self.desc,
            unit="row",
            unit_scale=True,
            leave=False,
            disable=not self.bar_wanted,
            file=sys.stderr,
        )
        self.hook = self.model.register_forward_pre_hook(self._count)
        return self

    def __exit__(self, *_exc) -> None:
        self.hook.remove()
        self.bar.close()

    def _count(self, _module, args) -> None:
        n = len(args[0]) if args and hasattr(args[0], "__len__") else 0
        self.rows += n
        self.bar.update(n)
        if self.report and time.monotonic() - self.shown >= self.every:
            self.shown = time.monotonic()
            self.report(self.rows, self.done, self.shards)

    def shard_done(self) -> None:
        self.done += 1
        if self.report:
            self.shown = time.monotonic()
            self.report(self.rows, self.done, self.shards)
