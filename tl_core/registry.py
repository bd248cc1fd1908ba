"""A registry of named entries, the one mechanism behind every "choose one of" in TransferLab.

Strategies (training/strategies.py), backbones (models/families.py), and the loss's terms,
regularisers and domain adaptation (training/term_specs.py declares them, regularizers.py and
adaptation.py implement them), each keep one `Registry`, in the spirit of timm's
`_registry.py` (`@register_model`, `list_models`, `model_entrypoint`):
  register(cls):  a class decorator that files the class under `cls.name` (the entry is the class,
                  or what `make(cls)` gives: strategies keep one instance);
  add(name, x):   files any entry under a name (a family files one spec per model);
  get(name):      the entry, or a UserError that names the setting and lists the choices;
  names():        every name, in the order registered (forms and `--help` list them so).
A name is filed once: a second entry under it is a programming error (ValueError at import),
never a silent overwrite (timm warns and overwrites). A registry may reserve a name that means
"no entry" (`none="none"` for the loss's terms: `--regularizer none`): it leads `choices()`, and
nothing can be filed under it.

Imports nothing but errors: a registry and what is filed in it cost nothing to import, so the
settings can be checked against it in processes that never load torch (queueing, the worker).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, cast

from .errors import UserError

T = TypeVar("T")
C = TypeVar("C", bound=type)


class Registry(Generic[T]):
    """Entries of one kind by name. `kind` words the errors ("unknown strategy 'x'"); `flag`, the
    setting that chooses among them, when it is not `--<kind>` (the adaptation's is `--adapt`)."""

    def __init__(self, kind: str, *, flag: str = "", none: str | None = None, make: Callable[[Any], T] | None = None):
        self.kind = kind
        self.flag = flag or f"--{kind}"
        self.none = none
        self._make = make
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """File `entry` under `name`; a name already filed (or empty, or the reserved one) is refused."""
        if not name or name == self.none:
            raise ValueError(f"a {self.kind} needs a name other than {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, cls: C) -> C:
        """Class decorator: file `cls` (or `make(cls)`) under `cls.name`; the class is returned as it was."""
        entry = self._make(cls) if self._make is not None else cast(T, cls)  # without `make`, T is the class
        self.add(getattr(cls, "name", ""), entry)
        return cls

    def get(self, name: str) -> T:
        """The entry filed under `name`; a UserError listing the choices if there is none."""
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(
                f"unknown {self.kind} {name!r} ({self.flag}); choose one of: {', '.join(self.choices())}"
            ) from None

    def names(self) -> list[str]:
        """Every name filed, in the order filed."""
        return list(self._entries)

    def choices(self) -> list[str]:
        """What the setting may say: the reserved "no entry" name first, if any, then every name."""
        return ([self.none] if self.none is not None else []) + self.names()

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
