"""Residual-stream access: site names, the layer convention, hooks on a bridge or a HF model.

- :mod:`revlens.sites.names`: :class:`Site`, :func:`resolve_sites` (the only place hook names are
  built and validated);
- :mod:`revlens.sites.access`: :func:`access` → a :class:`SiteAccess` (register hooks, read
  position-weighted activations with an early stop) for a ``LensModel``, a ``TransformerBridge``
  or a plain Hugging Face model (:mod:`revlens.sites.hf`).

A new site kind goes into :data:`revlens.modes.SiteKind`, :func:`revlens.sites.names.hook_name`
and :meth:`revlens.sites.hf.HFAccess._target`: every stage then accepts it.
"""

from revlens.modes import SITE_KINDS, SiteKind
from revlens.sites.access import SiteAccess, access
from revlens.sites.names import (
    LayerSpec,
    Site,
    available_layers,
    hook_name,
    normalize_layers,
    resolve_sites,
)

__all__ = [
    "SITE_KINDS",
    "LayerSpec",
    "Site",
    "SiteAccess",
    "SiteKind",
    "access",
    "available_layers",
    "hook_name",
    "normalize_layers",
    "resolve_sites",
]
