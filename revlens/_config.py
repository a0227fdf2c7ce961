"""Configuration dataclasses: validated on construction, saved beside results, built by the CLI.

A stage's settings are one dataclass deriving from :class:`Config` (e.g.
:class:`revlens.analyze.AnalyzeConfig`). Fields declare their command-line help with
:func:`option`; :meth:`Config.add_arguments` turns the fields into ``argparse`` options and
:meth:`Config.from_args` builds the same object from parsed arguments, so a flag cannot drift
from the API. Values are checked (and normalised: numpy integers become ``int``, a single string
becomes a one-item tuple) in ``__post_init__``, before any expensive work.

The checkers (:func:`as_int`, :func:`as_float`, :func:`as_layers`, ...) are also used directly by
functions that take plain keyword arguments.
"""

import argparse
import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar, get_args, no_type_check

from revlens.errors import ConfigError, SiteError

__all__ = [
    "Config",
    "as_bool",
    "as_float",
    "as_int",
    "as_layers",
    "as_ranks",
    "as_str_tuple",
    "option",
    "parse_floats",
    "parse_ints",
    "parse_steps",
]


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def as_int(name: str, value: Any, *, min: int | None = None, max: int | None = None) -> int:
    """``value`` as an ``int`` (numpy integers accepted; bools, floats and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    out = int(value)
    if min is not None and out < min:
        raise ConfigError(f"{name} must be >= {min}, got {out}")
    if max is not None and out > max:
        raise ConfigError(f"{name} must be <= {max}, got {out}")
    return out


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def as_float(
    name: str,
    value: Any,
    *,
    min: float | None = None,
    max: float | None = None,
    open_min: bool = False,
) -> float:
    """``value`` as a finite ``float`` within the bounds (``open_min``: strictly above ``min``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    out = float(value)
    if not math.isfinite(out):
        raise ConfigError(f"{name} must be finite, got {out}")
    if min is not None and (out <= min if open_min else out < min):
        raise ConfigError(f"{name} must be {'>' if open_min else '>='} {min}, got {out}")
    if max is not None and out > max:
        raise ConfigError(f"{name} must be <= {max}, got {out}")
    return out


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def as_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool (numpy bools accepted)."""
    if type(value).__name__ == "bool_":
        return bool(value)
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return value


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def as_str_tuple(name: str, value: Any, valid: Sequence[str] | None = None) -> tuple[str, ...]:
    """A tuple of strings: one string is one item (never its characters)."""
    items = [value] if isinstance(value, str) else value
    try:
        items = list(items)
    except TypeError:
        raise ConfigError(f"{name} must be a string or a list of strings, got {value!r}") from None
    bad = [v for v in items if not isinstance(v, str) or (valid is not None and v not in valid)]
    if bad:
        hint = f"; valid: {', '.join(valid)}" if valid is not None else ""
        raise ConfigError(f"{name}: {bad[0]!r} is not understood{hint}")
    return tuple(dict.fromkeys(items))


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def as_ranks(name: str, value: Any) -> tuple[int, ...]:
    """Subspace ranks: one int or ints ``>= 1``, sorted and unique (empty allowed)."""
    items = (
        [value] if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    )
    try:
        items = list(items)
    except TypeError:
        raise ConfigError(f"{name} must be an int or a list of ints >= 1, got {value!r}") from None
    return tuple(sorted({as_int(name, k, min=1) for k in items}))


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def as_layers(value: Any, name: str = "layers") -> str | tuple[int, ...]:
    """``"all"`` (also for ``None``) or a tuple of layer indices (ints, numpy ints)."""
    if value is None or (isinstance(value, str) and value == "all"):
        return "all"
    if isinstance(value, str):
        raise SiteError(f"{name}={value!r} is not understood; use 'all', an int or a list of ints")
    items = [value] if isinstance(value, numbers.Integral) else value
    try:
        items = list(items)
    except TypeError:
        raise SiteError(
            f"{name}={value!r} is not understood; use 'all', an int or a list of ints"
        ) from None
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise SiteError(f"{name}: layer {item!r} is not an integer")
        out.append(int(item))
    if not out:
        raise SiteError(f"{name} is empty; use 'all', an int or a list of ints")
    return tuple(dict.fromkeys(out))


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    cli: bool = True,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    parse: Any = None,
    nargs: str | None = None,
) -> Any:
    """A config field with command-line help (``cli=False``: API only; ``parse(flag, raw)``: how
    the command-line string(s) become the value; ``nargs``: argparse's, for a custom parse)."""
    meta = {
        "help": help,
        "flag": flag,
        "cli": cli,
        "choices": choices,
        "metavar": metavar,
        "parse": parse,
        "nargs": nargs,
    }
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed; use a tuple")
    return dataclasses.field(default=default, metadata=meta)


def _kind(tp: Any) -> str:
    text = str(tp)
    if tp is bool:
        return "bool"
    if tp is int:
        return "int"
    if tp is float:
        return "float"
    if "tuple" in text and "int" in text and "str" in text:
        return "layers"
    if "tuple" in text:
        return "tuple"
    if "int" in text and "None" in text:
        return "optional_int"
    return "str"


def _parse(kind: str, flag: str, raw: Any) -> Any:
    if raw is None:
        return None
    try:
        if kind == "int":
            return int(raw)
        if kind == "optional_int":
            return None if str(raw).lower() == "none" else int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(
            f"{flag} takes {'a number' if kind == 'float' else 'an integer'}, got {raw!r}"
        ) from None
    if kind == "layers":
        if list(raw) == ["all"]:
            return "all"
        try:
            return tuple(int(v) for v in raw)
        except ValueError:
            raise ConfigError(f"{flag} takes integers or 'all', got {' '.join(raw)}") from None
    if kind == "tuple":
        return tuple(raw)
    return raw


def parse_floats(flag: str, raw: Sequence[str]) -> tuple[float, ...]:
    """Command-line numbers (``--alphas 0 0.5 1``)."""
    try:
        return tuple(float(v) for v in raw)
    except ValueError:
        raise ConfigError(f"{flag} takes numbers, got {' '.join(raw)}") from None


def parse_ints(flag: str, raw: Sequence[str]) -> tuple[int, ...]:
    """Command-line integers (``--ranks 1 2 4``)."""
    try:
        return tuple(int(v) for v in raw)
    except ValueError:
        raise ConfigError(f"{flag} takes integers, got {' '.join(raw)}") from None


def parse_steps(flag: str, raw: Sequence[str]) -> str | tuple[int, ...]:
    """``all``, ``last`` or integers."""
    if list(raw) in (["all"], ["last"]):
        return raw[0]
    try:
        return tuple(int(v) for v in raw)
    except ValueError:
        raise ConfigError(f"{flag} takes integers, 'last' or 'all', got {' '.join(raw)}") from None


@dataclasses.dataclass
class Config:
    """Base of revlens' settings dataclasses (see the module docstring).

    Subclasses implement :meth:`validate`, which checks and normalises every field in place.
    """

    FORMAT: ClassVar[str] = "revlens-config"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check and normalise fields (raise :class:`~revlens.errors.ConfigError`)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples become lists)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: Any) -> "Config":
        """Inverse of :meth:`to_dict`; unknown keys are refused (named)."""
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__}.from_dict expects a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @classmethod
    def build(
        cls, config: "Config | None" = None, where: str | None = None, **settings: Any
    ) -> Any:
        """``config`` (or the defaults) with ``settings`` overriding it; an unknown setting is a
        :class:`~revlens.errors.ConfigError` naming it and listing the valid ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise ConfigError(
                f"{where or cls.__name__}: unknown setting(s) {unknown}; valid: {', '.join(names)}"
            )
        if config is not None and not isinstance(config, cls):
            raise ConfigError(
                f"{where or cls.__name__}: config must be a {cls.__name__}, got {type(config).__name__}"
            )
        base = config.to_dict() if config is not None else {}
        return cls(**{**base, **settings})

    def replace(self, **changes: Any) -> "Config":
        """A validated copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, *, skip: Sequence[str] = ()) -> None:
        """Add one ``--flag`` per CLI field, with the field's help and default."""
        hints = _field_types(cls)
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if not meta.get("cli", False) or f.name in skip:
                continue
            flag = meta.get("flag") or "--" + f.name.replace("_", "-")
            kind = _kind(hints[f.name])
            default = f.default
            shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
            kw: dict[str, Any] = {"dest": f.name, "help": f"{meta['help']} (default: {shown})"}
            if kind == "bool":
                kw["action"] = "store_false" if default else "store_true"
            else:
                kw["default"] = None
                if meta.get("nargs"):
                    kw["nargs"] = meta["nargs"]
                elif kind in ("tuple", "layers"):
                    kw["nargs"] = "+"
                if meta.get("choices"):
                    kw["choices"] = list(meta["choices"])
                kw["metavar"] = meta.get("metavar") or f.name.upper()
            parser.add_argument(flag, **kw)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **extra: Any) -> "Config":
        """The config for parsed arguments (unset flags keep the defaults; ``extra`` overrides)."""
        hints = _field_types(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if not f.metadata.get("cli", False) or not hasattr(args, f.name):
                continue
            raw = getattr(args, f.name)
            kind = _kind(hints[f.name])
            if kind == "bool":
                values[f.name] = bool(raw)
            elif raw is not None:
                flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
                custom = f.metadata.get("parse")
                values[f.name] = (
                    custom(flag, raw) if custom is not None else _parse(kind, flag, raw)
                )
        values.update(extra)
        return cls(**values)

    @classmethod
    def field_choices(cls, name: str) -> tuple[str, ...]:
        """The valid values of a ``Literal``-typed field."""
        return tuple(get_args(_field_types(cls)[name]))


def _field_types(cls: type) -> dict[str, Any]:
    # the fields' declared types (typing.get_type_hints is empty for @no_type_check classes)
    return {f.name: f.type for f in dataclasses.fields(cls)}
