"""Typed errors raised by revlens.

Every error a user can cause derives from :class:`RevlensError`, so a caller can catch one
base class. Messages name the culprit (the checkpoint, layer, parameter or value) and what
was expected.
"""

__all__ = [
    "CacheError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "HistoryError",
    "MetricError",
    "MissingExtraError",
    "NonFiniteError",
    "NotFittedError",
    "OutputError",
    "ProbeError",
    "RevlensError",
    "ShapeMismatchError",
    "SiteError",
    "UnsupportedCheckpointError",
    "UpstreamError",
    "require",
]


class RevlensError(Exception):
    """Base class of every error revlens raises on bad input or bad state."""


class ConfigError(RevlensError, ValueError):
    """An argument or configuration value is out of range or of the wrong kind."""


class HistoryError(RevlensError, ValueError):
    """A training history is malformed (missing role, duplicate step, empty run...)."""


class CheckpointError(RevlensError, FileNotFoundError):
    """A checkpoint cannot be found or read (missing dir, no weights, bad file)."""


class ShapeMismatchError(RevlensError, ValueError):
    """Tensors that must agree in names or shapes do not (names the parameter and both shapes)."""


class SiteError(RevlensError, KeyError):
    """An unknown layer, hook site or position rule; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class ProbeError(RevlensError, ValueError):
    """A probe set is empty, too long for the context, or does not fit the tokenizer."""


class NonFiniteError(RevlensError, FloatingPointError):
    """NaN or inf found in weights or activations (names the checkpoint and layer)."""


class CacheError(RevlensError, RuntimeError):
    """A statistics cache cannot be used (written by another revlens version...)."""


class MetricError(RevlensError, ValueError):
    """A behaviour metric returned the wrong shape or non-finite values, or is ill-defined."""


class NotFittedError(RevlensError, AttributeError):
    """An estimator was used before ``fit``."""


class OutputError(RevlensError, ValueError):
    """An output path cannot be written (exists as a file, parent not writable...)."""


class DatasetError(RevlensError, ValueError):
    """A published data file is altered (sha256 mismatch) or malformed (names the file and line)."""


class MissingExtraError(RevlensError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class UpstreamError(RevlensError, RuntimeError):
    """A known bug in a library revlens builds on (names the family, setting and workaround)."""


def require(module: str, extra: str, what: str):
    """Import an optional dependency, or raise :class:`MissingExtraError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f'{what} needs the optional package {module!r}: pip install "revlens[{extra}]" ({exc})'
        ) from None


# Exceptions a forward pass raises on a model that cannot run what it was given (a shape, a dtype,
# a user's hook): re-raised by :func:`naming` as a RevlensError naming where it happened.
FORWARD_ERRORS = (RuntimeError, ValueError, IndexError, TypeError, KeyError, AttributeError)


class naming:
    """Context manager naming the culprit of an error raised inside it: a ``RevlensError`` is
    re-raised with ``where`` in front (same type; unchanged if it already names it), an exception of
    a forward pass (:data:`FORWARD_ERRORS`) as ``RevlensError("while <action> <where>: ...")``.

    Example: ``with naming(f"checkpoint {ck.name}", "evaluating"): ...``.
    """

    def __init__(self, where: str, action: str = "running") -> None:
        self.where, self.action = where, action

    def __enter__(self) -> "naming":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False  # KeyboardInterrupt / SystemExit pass unchanged
        if isinstance(exc, RevlensError):
            if self.where in str(exc):
                return False
            try:
                new = type(exc)(f"{self.where}: {exc}")
            except Exception:  # a subclass with another signature: keep it as it is
                return False
            raise new from exc
        if isinstance(exc, FORWARD_ERRORS):
            raise RevlensError(
                f"while {self.action} {self.where}: {type(exc).__name__}: {exc}"
            ) from exc
        return False


class UnsupportedCheckpointError(CheckpointError):
    """A checkpoint in a format revlens reads, but of a kind it cannot convert (e.g. a GGUF
    file whose architecture or quantization type is unsupported); names both and what is."""
