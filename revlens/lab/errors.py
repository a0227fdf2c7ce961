"""Errors specific to the lab (all derive from :class:`revlens.errors.RevlensError`)."""

from revlens.errors import CheckpointError, ConfigError, RevlensError

__all__ = ["ConfigError", "LabAssetsError", "LabOutputError", "RevlensError"]


class LabOutputError(RevlensError, FileExistsError):
    """``--out`` holds something that is not a lab dir (pass ``--force`` to overwrite)."""


class LabAssetsError(CheckpointError):
    """The shipped base/aligned checkpoints (``assets/lab/``) are missing or unreadable."""
