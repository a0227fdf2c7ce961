"""Hook names: built and validated here, and nowhere else.

revlens indexes the residual stream by **layer** ``l`` in ``0..n_layers``: layer 0 is the
stream entering block 0 (token + position embeddings), layer ``l >= 1`` is the stream after
``l`` blocks, i.e. ``blocks.{l-1}.hook_resid_post``. This is TransformerLens'
``accumulated_resid`` convention, so "layer 3" means "after three blocks".

Other sites (``resid_mid``: between attention and MLP of block ``l``; ``resid_pre``: entering
block ``l``) use the block index ``0..n_layers-1``; ``ln_final`` is the final layer norm's
output (one layer, index ``n_layers``).

Example:
    >>> sites = resolve_sites(bridge, layers="all")            # doctest: +SKIP
    >>> [s.hook_name for s in sites][:2]                         # doctest: +SKIP
    ['blocks.0.hook_resid_pre', 'blocks.0.hook_resid_post']
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from revlens.errors import SiteError

__all__ = ["SITE_KINDS", "Site", "SiteKind", "available_layers", "resolve_sites"]

SiteKind = Literal["resid_post", "resid_mid", "resid_pre", "ln_final"]
SITE_KINDS: tuple[str, ...] = ("resid_post", "resid_mid", "resid_pre", "ln_final")

LayerSpec = str | int | Sequence[int]  # "all", one layer, or a list (validated at run time)


@dataclass(frozen=True)
class Site:
    """One place in the forward pass where an activation is read or changed.

    Attributes:
        layer: revlens layer index (see module docstring).
        kind: which stream (``"resid_post"`` by default).
        hook_name: the TransformerLens hook point name.
    """

    layer: int
    kind: str
    hook_name: str

    @property
    def label(self) -> str:
        """Short human label, e.g. ``"L3"`` or ``"embed"``."""
        if self.kind == "resid_post":
            return "embed" if self.layer == 0 else f"L{self.layer}"
        return f"{self.kind}{self.layer}"


def _n_layers(model: Any) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "n_layers"):
        return int(cfg.n_layers)
    raise SiteError(f"cannot read n_layers from {type(model).__name__}; expected a TransformerBridge")


def available_layers(model: Any, kind: str = "resid_post") -> list[int]:
    """Valid layer indices for a site kind on this model."""
    n = _n_layers(model)
    if kind == "resid_post":
        return list(range(n + 1))
    if kind in ("resid_mid", "resid_pre"):
        return list(range(n))
    if kind == "ln_final":
        return [n]
    raise SiteError(f"unknown site kind {kind!r}; valid kinds: {', '.join(SITE_KINDS)}")


def _hook_name(kind: str, layer: int) -> str:
    if kind == "resid_post":
        return "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"
    if kind == "resid_mid":
        return f"blocks.{layer}.hook_resid_mid"
    if kind == "resid_pre":
        return f"blocks.{layer}.hook_resid_pre"
    return "ln_final.hook_out"


def normalize_layers(layers: LayerSpec, valid: Sequence[int]) -> list[int]:
    """Turn ``"all"``, an int or a list of ints into a sorted list of valid layer indices."""
    if isinstance(layers, str):
        if layers != "all":
            raise SiteError(f"layers={layers!r} is not understood; use 'all', an int or a list of ints")
        return list(valid)
    items: Iterable[Any] = [layers] if isinstance(layers, int) else layers
    out: list[int] = []
    for layer in items:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise SiteError(f"layer {layer!r} is not an int; valid layers: {list(valid)}")
        if layer not in valid:
            raise SiteError(f"layer {layer} does not exist; valid layers: {list(valid)}")
        if layer not in out:
            out.append(layer)
    if not out:
        raise SiteError(f"no layer selected; valid layers: {list(valid)}")
    return sorted(out)


def resolve_sites(model: Any, layers: LayerSpec = "all", kind: str = "resid_post") -> list[Site]:
    """Build and validate the hook sites for ``layers`` of ``kind`` on ``model``.

    Args:
        model: a TransformerLens ``TransformerBridge`` (anything with ``cfg.n_layers`` and
            ``hook_dict``).
        layers: ``"all"``, one layer index or a list of them.
        kind: one of ``SITE_KINDS``.

    Raises:
        SiteError: unknown kind or layer, or a hook the model does not have (the message lists
            the valid names).
    """
    if kind not in SITE_KINDS:
        raise SiteError(f"unknown site kind {kind!r}; valid kinds: {', '.join(SITE_KINDS)}")
    valid = available_layers(model, kind)
    chosen = normalize_layers(layers, valid)
    registry = getattr(model, "hook_dict", None)
    sites = []
    for layer in chosen:
        name = _hook_name(kind, layer)
        if registry is not None and name not in registry:
            similar = sorted(n for n in registry if "resid" in n or n.startswith("ln_final"))
            raise SiteError(
                f"hook {name!r} (site {kind}, layer {layer}) is not on this model; "
                f"valid residual hooks: {similar}"
            )
        sites.append(Site(layer=layer, kind=kind, hook_name=name))
    return sites


def hook_point(model: Any, site: Site) -> Any:
    """The model's ``HookPoint`` module for ``site`` (validated)."""
    try:
        return model.hook_dict[site.hook_name]
    except KeyError:
        raise SiteError(f"hook {site.hook_name!r} is not on this model") from None
