"""Site names and the layer convention: built and validated here, and nowhere else.

revlens indexes the residual stream by **layer** ``l`` in ``0..n_layers`` (site ``resid_post``):
layer 0 is the stream entering block 0 (token + position embeddings), layer ``l >= 1`` is the
stream after ``l`` blocks, i.e. ``blocks.{l-1}.hook_resid_post``. This is TransformerLens'
``accumulated_resid`` convention, so "layer 3" means "after three blocks".

The other site kinds use the **block** index ``0..n_layers-1``: ``resid_pre`` (entering block
``l``), ``resid_mid`` (between attention and MLP of block ``l``; sequential blocks only),
``attn_out`` / ``mlp_out`` (what block ``l``'s attention / MLP adds to the stream); ``ln_final`` is
the final layer norm's output (one layer, index ``n_layers``).

Example:
    >>> sites = resolve_sites(bridge, layers="all")            # doctest: +SKIP
    >>> [s.hook_name for s in sites][:2]                         # doctest: +SKIP
    ['blocks.0.hook_resid_pre', 'blocks.0.hook_resid_post']
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, no_type_check

from revlens._config import as_layers
from revlens._types import ModuleLike
from revlens.errors import SiteError
from revlens.modes import SITE_KINDS, SiteKind, check_mode

__all__ = [
    "SITE_KINDS",
    "LayerSpec",
    "Site",
    "SiteKind",
    "available_layers",
    "hook_name",
    "normalize_layers",
    "resolve_sites",
]

LayerSpec = str | int | Sequence[int] | None  # "all" / None, one layer, or a list (validated)

# position of each kind inside a block, in forward order (for "the deepest site")
_ORDER = {"resid_pre": 0, "attn_out": 1, "resid_mid": 2, "mlp_out": 3, "resid_post": 4}


@dataclass(frozen=True)
class Site:
    """One place in the forward pass where an activation is read or changed.

    Attributes:
        layer: revlens layer index (see the module docstring).
        kind: the site kind.
        hook_name: the TransformerLens hook point name (also the site's name on a plain
            Hugging Face model, where no hook point exists).
    """

    layer: int
    kind: str
    hook_name: str

    @property
    def label(self) -> str:
        """Short human label, e.g. ``"L3"``, ``"embed"`` or ``"attn_out1"``."""
        if self.kind == "resid_post":
            return "embed" if self.layer == 0 else f"L{self.layer}"
        return f"{self.kind}{self.layer}"

    @property
    def order(self) -> tuple[int, int]:
        """Sort key in forward order: ``(block, position within the block)``."""
        if self.kind == "ln_final":
            return (self.layer, 9)
        if self.kind == "resid_post":
            return (0, 0) if self.layer == 0 else (self.layer - 1, _ORDER["resid_post"])
        return (self.layer, _ORDER[self.kind])


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def available_layers(n_layers: int, kind: SiteKind = "resid_post") -> list[int]:
    """Valid layer indices for a site kind on a model with ``n_layers`` blocks."""
    check_mode("site", kind, SITE_KINDS, error=SiteError)
    if kind == "resid_post":
        return list(range(n_layers + 1))
    if kind == "ln_final":
        return [n_layers]
    return list(range(n_layers))


def hook_name(kind: str, layer: int) -> str:
    """The TransformerLens hook point of ``kind`` at revlens ``layer``."""
    if kind == "resid_post":
        return "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"
    if kind == "ln_final":
        return "ln_final.hook_out"
    return f"blocks.{layer}.hook_{kind}"


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def normalize_layers(layers: LayerSpec, valid: Sequence[int]) -> list[int]:
    """Turn ``"all"`` / ``None``, an int or a list of ints into a sorted list of valid layers."""
    spec = as_layers(layers)
    if spec == "all":
        return list(valid)
    bad = [layer for layer in spec if layer not in valid]
    if bad:
        raise SiteError(f"layer {bad[0]} does not exist; valid layers: {list(valid)}")
    return sorted(spec)


def _n_layers(model: Any) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "n_layers"):
        return int(cfg.n_layers)
    raise SiteError(
        f"cannot read n_layers from {type(model).__name__}; expected a TransformerBridge"
    )


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def resolve_sites(
    model: ModuleLike, layers: LayerSpec = "all", kind: SiteKind = "resid_post"
) -> list[Site]:
    """Build and validate the sites for ``layers`` of ``kind`` on a TransformerLens bridge.

    Args:
        model: a ``TransformerBridge`` (anything with ``cfg.n_layers`` and ``hook_dict``).
        layers: ``"all"`` (or ``None``), one layer index or a list of them.
        kind: one of :data:`SITE_KINDS`.

    Raises:
        SiteError: unknown kind or layer, or a hook the model does not have (e.g. ``resid_mid``
            on a parallel-block family); the message lists the valid names.
    """
    kind = check_mode("site", kind, SITE_KINDS, error=SiteError)
    chosen = normalize_layers(layers, available_layers(_n_layers(model), kind))
    registry = getattr(model, "hook_dict", None)
    sites = []
    for layer in chosen:
        name = hook_name(kind, layer)
        if registry is not None and name not in registry:
            similar = sorted(
                n
                for n in registry
                if n.startswith("blocks.0.hook_") or n.startswith("ln_final.hook_out")
            )
            raise SiteError(
                f"site {kind} (hook {name!r}, layer {layer}) is not on this model "
                f"({type(model).__name__}); hooks of block 0: {similar}"
            )
        sites.append(Site(layer=layer, kind=kind, hook_name=name))
    return sites
