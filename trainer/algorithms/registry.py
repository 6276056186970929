"""Named registries for the variants that keep growing: advantage estimators (``ADVANTAGE_ESTIMATORS``),
loss aggregations (``LOSS_AGGREGATIONS``) and KL estimators (``KL_ESTIMATORS``).

A new algorithm is one decorated function::

    @LOSS_AGGREGATIONS.register("my_loss")
    def my_loss(per_token_loss, mask, context): ...

and the run config accepts ``loss_type: my_loss`` at once (its validator asks the registry), with a
clear error listing the registered names for anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names → entries of one kind; a name is registered once and looked up with a clear error."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if not name or not name.replace("_", "").isalnum():
            raise ValueError(f"{self.kind} name must be a non-empty identifier, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Forget ``name`` (a plugin being unloaded, a test cleaning up); unknown names are ignored."""
        self._entries.pop(name, None)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`, for registries whose entries are the functions themselves."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"{self.kind} {self._unknown(name)}") from None

    def check(self, name: str) -> str:
        """``name`` if registered, else a ValueError without the kind (the config error names the field)."""
        if name not in self._entries:
            raise ValueError(self._unknown(name))
        return name

    def _unknown(self, name: object) -> str:
        quoted = [repr(n) for n in self._entries]
        choices = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
        return f"must be one of {choices}, got {name!r}"

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
