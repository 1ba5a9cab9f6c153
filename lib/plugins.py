"""Named entries that modules register at import (methods, attacks, metric families), listed
in the order of their modules whatever order the modules were imported in."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Plugins(Generic[T]):
    """Entries of `package`'s `modules`; `module_of(entry)` names the module that added it."""

    def __init__(self, package: str, modules: tuple[str, ...], module_of: Callable[[T], str]):
        self.package, self.modules, self.module_of = package, modules, module_of
        self._added: dict[str, T] = {}
        self._ordered: dict[str, T] | None = None

    def add(self, name: str, entry: T) -> T:
        self._added[name] = entry
        self._ordered = None
        return entry

    def all(self) -> dict[str, T]:
        """Every entry, its modules imported first (they add themselves), in module order and,
        within a module, in the order they were added."""
        if self._ordered is None:
            for module in self.modules:
                importlib.import_module(f"{self.package}.{module}")
            rank = {f"{self.package}.{m}": i for i, m in enumerate(self.modules)}
            entries = sorted(
                self._added.items(), key=lambda kv: rank.get(self.module_of(kv[1]), 99)
            )
            self._ordered = dict(entries)
        return self._ordered
