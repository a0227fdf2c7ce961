"""The ``attached(model, optimizer)`` context manager every training-time blocker shares."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["Attachable"]

T = TypeVar("T", bound="Attachable")


class Attachable:
    """Mixin for objects with ``attach(model, optimizer)`` / ``detach()``."""

    def attach(self: T, model: Any, optimizer: Any = None) -> T:  # pragma: no cover - overridden
        raise NotImplementedError

    def detach(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    @contextmanager
    def attached(self: T, model: Any, optimizer: Any = None) -> Iterator[T]:
        """Context manager: :meth:`attach` on enter, :meth:`detach` on exit (also on error)."""
        self.attach(model, optimizer)
        try:
            yield self
        finally:
            self.detach()
