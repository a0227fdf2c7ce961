"""Single source of the package version (also keys on-disk caches)."""

__version__ = "0.1.0"
