"""The order units run in: a unit is released once every unit it reads has completed; a failed
unit's dependants (and theirs) are not run. Pure bookkeeping, no orchestrator: the audit flow
submits what it releases, and tests drive it directly."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

U = TypeVar("U", bound=Hashable)
NOT_RUN = "not run: a unit it reads failed"


class Scheduler:
    """Dependency bookkeeping over `units` with `needs(unit)` their prerequisites."""

    def __init__(self, units: Iterable[U], needs: Callable[[U], list[U]]):
        self.units = list(units)
        self._needs = {u: set(needs(u)) for u in self.units}
        self._dependants: dict[U, list[U]] = {u: [] for u in self.units}
        for u in self.units:
            for n in self._needs[u]:
                self._dependants[n].append(u)
        self._waiting = {u: len(self._needs[u]) for u in self.units}
        self.succeeded: set[U] = set()
        self.failed: dict[U, str] = {}

    def ready(self) -> list[U]:
        """The units that need nothing, in order (submit these first)."""
        return [u for u in self.units if not self._needs[u]]

    def done(self, unit: U, error: str | None = None) -> tuple[list[U], list[U]]:
        """Record that `unit` finished (failed with `error`); returns the units it releases and
        the units that will now never run (recorded as failed with NOT_RUN)."""
        if error is None:
            self.succeeded.add(unit)
            released = []
            for d in self._dependants[unit]:
                self._waiting[d] -= 1
                if self._waiting[d] == 0 and d not in self.failed:
                    released.append(d)
            return released, []
        self.failed[unit] = error
        skipped, stack = [], list(self._dependants[unit])
        while stack:
            d = stack.pop(0)
            if d in self.failed:
                continue
            self.failed[d] = NOT_RUN
            skipped.append(d)
            stack += self._dependants[d]
        return [], skipped

    @property
    def finished(self) -> bool:
        return len(self.succeeded) + len(self.failed) == len(self.units)
