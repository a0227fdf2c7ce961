"""The :class:`Directions` container shared by drift, causal, blocking and monitoring.

A ``Directions`` holds one unit vector per layer, with the revlens layer index of each row
(see :mod:`revlens.hooks`) and the method that produced it. Sign convention: the vectors point
**from aligned toward base** (motion along ``+v`` is reversion).
"""

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from revlens.errors import ConfigError, ShapeMismatchError, SiteError

__all__ = ["Directions"]


@dataclass(frozen=True)
class Directions:
    """Unit directions, one per layer.

    Attributes:
        vectors: ``[layer, d_model]`` float32, unit norm rows.
        layers: revlens layer index of each row.
        method: producing method (``"mean_diff"``, ``"custom"``...).
        site: site kind the layers refer to.
        meta: free-form provenance (e.g. stability).

    Example:
        >>> v = Directions.from_tensor(torch.eye(4)[:2], layers=[1, 2])
        >>> v
        Directions(method='custom', layers=[1, 2], d_model=4)
    """

    vectors: Float[Tensor, "layer d_model"]
    layers: tuple[int, ...]
    method: str = "custom"
    site: str = "resid_post"
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2:
            raise ShapeMismatchError(f"directions must be [layer, d_model]; got shape {tuple(self.vectors.shape)}")
        if self.vectors.shape[0] != len(self.layers):
            raise ShapeMismatchError(
                f"directions have {self.vectors.shape[0]} rows but {len(self.layers)} layers {list(self.layers)}"
            )
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"duplicate layers in directions: {list(self.layers)}")

    @classmethod
    def from_tensor(cls, vectors: Tensor, layers: Iterable[int], *, method: str = "custom",
                    site: str = "resid_post", normalize: bool = True, meta: Mapping[str, Any] | None = None) -> "Directions":
        """Build from a ``[layer, d]`` tensor (or ``[d]`` for one layer), normalising rows.

        Raises:
            ShapeMismatchError: wrong rank or row count.
            ConfigError: a zero-norm or non-finite row (e.g. identical base and aligned).
        """
        layers = tuple(int(x) for x in layers)
        v = torch.as_tensor(vectors).detach().to("cpu", torch.float64)
        if v.ndim == 1:
            v = v[None]
        if v.ndim != 2 or v.shape[0] != len(layers):
            raise ShapeMismatchError(f"expected directions of shape [{len(layers)}, d_model]; got {tuple(v.shape)}")
        if not bool(torch.isfinite(v).all()):
            raise ConfigError(f"direction ({method}) holds NaN or inf")
        norms = v.norm(dim=1)
        zero = [layers[i] for i in range(len(layers)) if norms[i] <= 1e-12]
        if zero:
            raise ConfigError(
                f"direction ({method}) has zero norm at layer(s) {zero}: are base and aligned identical there?"
            )
        if normalize:
            v = v / norms[:, None]
        return cls(v.to(torch.float32), layers, method, site, dict(meta or {}))

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    def __getitem__(self, layer: int) -> Float[Tensor, " d_model"]:
        try:
            return self.vectors[self.layers.index(layer)]
        except ValueError:
            raise SiteError(f"no direction for layer {layer}; layers: {list(self.layers)}") from None

    def select(self, layers: Iterable[int]) -> "Directions":
        """The directions of a subset of layers."""
        layers = list(layers)
        rows = torch.stack([self[layer] for layer in layers])
        return Directions(rows, tuple(layers), self.method, self.site, dict(self.meta))

    def check_d_model(self, d_model: int, what: str = "model") -> None:
        """Raise ShapeMismatchError unless the vectors live in R^d_model."""
        if self.d_model != d_model:
            raise ShapeMismatchError(
                f"directions ({self.method}) have d_model={self.d_model} but the {what} has d_model={d_model}"
            )

    def __repr__(self) -> str:
        return f"Directions(method={self.method!r}, layers={list(self.layers)}, d_model={self.d_model})"

    def save(self, path: Any) -> None:
        """Write to a ``.safetensors`` file (metadata: layers, method, site)."""
        from safetensors.torch import save_file

        save_file({"vectors": self.vectors.contiguous()}, str(path),
                  metadata={"layers": json.dumps(list(self.layers)), "method": self.method, "site": self.site,
                            "meta": json.dumps(dict(self.meta), default=str)})

    @classmethod
    def load(cls, path: Any) -> "Directions":
        """Inverse of :meth:`save`."""
        from safetensors import safe_open

        with safe_open(str(Path(path)), framework="pt") as f:
            meta = f.metadata() or {}
            vec = f.get_tensor("vectors")
        return cls(vec, tuple(json.loads(meta["layers"])), meta.get("method", "custom"), meta.get("site", "resid_post"),
                   json.loads(meta.get("meta", "{}")))
