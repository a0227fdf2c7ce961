"""Typed errors raised by revlens.

Every error a user can cause derives from :class:`RevlensError`, so a caller can catch one
base class. Messages name the culprit (the checkpoint, layer, parameter or value) and what
was expected.
"""

__all__ = [
    "CacheError",
    "CheckpointError",
    "ConfigError",
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
            f"{what} needs the optional package {module!r}: pip install \"revlens[{extra}]\" ({exc})"
        ) from None


class UnsupportedCheckpointError(CheckpointError):
    """A checkpoint in a format revlens reads, but of a kind it cannot convert (e.g. a GGUF
    file whose architecture or quantization type is unsupported); names both and what is."""
