"""The one registry of blocking methods: name → :class:`~revlens.block.strategy.BlockingStrategy` class.

A class is registered once, where it is defined, with the :func:`register` decorator::

    @register("freeze")
    class Freeze(BlockingStrategy): ...

Everything that chooses a blocking method by name reads this registry: ``BlockerConfig(method=...)``
(the activation-space methods, subclasses of :class:`~revlens.block.ReversionBlocker`, listed by
:data:`revlens.block.METHODS`), the lab's ``run_blocked(lab, method)`` and ``revlens lab --block``
(every method: :func:`method_names`). The tuples are live views, so a method registered by a user's
module (or a test) is valid everywhere from then on. The built-in activation-space names are also
the ``Literal`` :data:`revlens.modes.BlockMethod` (for type annotations; a test keeps both equal).
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, no_type_check, overload

from revlens.errors import ConfigError
from revlens.modes import check_mode

__all__ = ["MethodNames", "method_class", "method_names", "register", "unregister"]

T = TypeVar("T", bound=type)

_REGISTRY: dict[str, type] = {}
_PLUGIN_GROUP = "revlens.blocking"
_plugins_loaded = False


def _load_plugins() -> None:
    """Import, once, the modules that register strategies through the ``revlens.blocking``
    entry-point group (revlens' own ``WeightBlocker`` and published defenses, or another package's),
    so their names are valid before anyone imports those modules by hand."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=_PLUGIN_GROUP):
        ep.load()


def register(name: str) -> Callable[[T], T]:
    """Class decorator: register a blocking strategy under ``name`` (sets ``cls.method = name``).

    Raises:
        ConfigError: ``name`` is not a plain identifier-like string, or another class already holds
            it (re-registering the same class, e.g. on a module reload, is allowed).
    """
    if (
        not isinstance(name, str)
        or not name
        or not name.replace("_", "").replace("-", "").isalnum()
    ):
        raise ConfigError(
            f"a blocking method's name must be a plain word such as 'freeze_layer', got {name!r}"
        )

    def deco(cls: T) -> T:
        held = _REGISTRY.get(name)
        if held is not None and (held.__module__, held.__qualname__) != (
            cls.__module__,
            cls.__qualname__,
        ):
            raise ConfigError(
                f"blocking method {name!r} is already registered by {held.__module__}.{held.__qualname__}"
            )
        cls.method = name  # type: ignore[attr-defined]
        _REGISTRY[name] = cls
        return cls

    return deco


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (tests that register a throwaway method clean up with it)."""
    _REGISTRY.pop(name, None)


def method_names(kind: type | None = None) -> tuple[str, ...]:
    """Registered names, in registration order (``kind``: only subclasses of it)."""
    _load_plugins()
    return tuple(n for n, c in _REGISTRY.items() if kind is None or issubclass(c, kind))


@no_type_check  # validates its own argument (typed errors), also under the test type-checker
def method_class(name: str, kind: type | None = None, *, field: str = "method") -> type:
    """The class registered as ``name`` (``kind``: it must be a subclass of it).

    Raises:
        ConfigError: unknown name (the error lists the valid ones).
    """
    check_mode(field, name, method_names(kind))
    return _REGISTRY[name]


class MethodNames(Sequence[str]):
    """A live, tuple-like view of the registered names (of subclasses of ``kind``, or of the class a
    zero-argument ``kind()`` returns — none while it returns ``None`` —, for a module that cannot
    import that class yet): usable as ``choices`` and in ``in`` tests, always up to date with
    :func:`register`."""

    def __init__(self, kind: type | Callable[[], type | None] | None = None) -> None:
        self._kind = kind

    def _names(self) -> tuple[str, ...]:
        kind = self._kind
        if kind is None or isinstance(kind, type):
            return method_names(kind)
        cls = kind()
        return () if cls is None else method_names(cls)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[str, ...]: ...
    def __getitem__(self, i: Any) -> Any:
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (
            tuple(other) if isinstance(other, (tuple, list, MethodNames)) else other
        )

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))
