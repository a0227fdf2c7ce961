"""Single source of the package version (also keys on-disk caches)."""

__version__ = "0.2.0"
