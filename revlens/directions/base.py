"""The :class:`Directions` container shared by drift, causal, blocking and monitoring.

A ``Directions`` holds, per layer, an orthonormal basis of ``k`` directions (``k = 1``: one unit
vector, the reversion direction ``v_rev``; ``k > 1``: a rank-k reversion subspace), with the
revlens layer index of each row (see :mod:`revlens.sites`) and the method that produced it.
Sign convention: the (first) vectors point **from aligned toward base** (motion along ``+v`` is
reversion).
"""

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from revlens._types import PathLike
from revlens.errors import ConfigError, ShapeMismatchError, SiteError
from revlens.modes import SiteKind

__all__ = ["Directions", "orthonormal_rows"]


def orthonormal_rows(rows: Float[Tensor, "k d"], what: str) -> Float[Tensor, "k d"]:
    """Gram–Schmidt (QR) of ``rows`` keeping their order and the sign of each row's own axis.

    Raises:
        ConfigError: the rows are (nearly) linearly dependent (rank below ``k``).
    """
    k = rows.shape[0]
    q, r = torch.linalg.qr(rows.T.to(torch.float64))
    diag = torch.diagonal(r)
    scale = rows.norm(dim=1).max().clamp_min(1e-300)
    if bool((diag.abs() <= 1e-10 * scale).any()):
        raise ConfigError(f"{what}: the {k} directions are linearly dependent (rank < {k})")
    return (q * torch.sign(diag)[None, :]).T


@dataclass(frozen=True)
class Directions:
    """Per-layer reversion directions (a rank-k basis per layer; k = 1 by default).

    Attributes:
        basis: ``[layer, k, d_model]`` float32, orthonormal rows per layer (a ``[layer, d]``
            tensor of unit rows is accepted and read as ``k = 1``).
        layers: revlens layer index of each row.
        method: producing method (``"mean_diff"``, ``"custom"``...).
        site: site kind the layers refer to.
        meta: free-form provenance (e.g. stability).

    Example:
        >>> v = Directions.from_tensor(torch.eye(4)[:2], layers=[1, 2])
        >>> v
        Directions(method='custom', layers=[1, 2], d_model=4)
        >>> v.vectors.shape, v.rank
        (torch.Size([2, 4]), 1)
    """

    basis: Float[Tensor, "layer k d_model"]
    layers: tuple[int, ...]
    method: str = "custom"
    site: SiteKind = "resid_post"
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.basis.ndim == 2:
            object.__setattr__(self, "basis", self.basis[:, None, :])
        if self.basis.ndim != 3:
            raise ShapeMismatchError(
                f"directions must be [layer, d_model] or [layer, k, d_model]; got shape {tuple(self.basis.shape)}"
            )
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if self.basis.shape[0] != len(self.layers):
            raise ShapeMismatchError(
                f"directions have {self.basis.shape[0]} rows but {len(self.layers)} layers {list(self.layers)}"
            )
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"duplicate layers in directions: {list(self.layers)}")

    @classmethod
    def from_tensor(
        cls,
        vectors: Tensor,
        layers: Iterable[int],
        *,
        method: str = "custom",
        site: SiteKind = "resid_post",
        normalize: bool = True,
        meta: Mapping[str, Any] | None = None,
    ) -> "Directions":
        """Build from ``[d]`` (one layer), ``[layer, d]`` or ``[layer, k, d]``; rows are normalised
        (``k > 1``: orthonormalised in order, keeping each row's sign).

        Raises:
            ShapeMismatchError: wrong rank or row count.
            ConfigError: a zero-norm, non-finite or linearly dependent row (names the layer).
        """
        layers = tuple(int(x) for x in layers)
        v = torch.as_tensor(vectors).detach().to("cpu", torch.float64)
        if v.ndim == 1:
            v = v[None]
        if v.ndim == 2:
            v = v[:, None, :]
        if v.ndim != 3 or v.shape[0] != len(layers):
            raise ShapeMismatchError(
                f"expected directions of shape [{len(layers)}, d_model] or [{len(layers)}, k, d_model]; "
                f"got {tuple(torch.as_tensor(vectors).shape)}"
            )
        if not bool(torch.isfinite(v).all()):
            raise ConfigError(f"direction ({method}) holds NaN or inf")
        norms = v.norm(dim=-1)
        zero = [layers[i] for i in range(len(layers)) if bool((norms[i] <= 1e-12).any())]
        if zero:
            raise ConfigError(
                f"direction ({method}) has zero norm at layer(s) {zero}: are base and aligned identical there?"
            )
        if normalize:
            rows = [
                orthonormal_rows(v[i], f"direction ({method}) at layer {layers[i]}")
                if v.shape[1] > 1
                else v[i] / norms[i][:, None]
                for i in range(len(layers))
            ]
            v = torch.stack(rows)
        return cls(v.to(torch.float32), layers, method, site, dict(meta or {}))

    # ------------------------------------------------------------------ views
    @property
    def vectors(self) -> Float[Tensor, "layer d_model"]:
        """The first direction of every layer (``v_rev`` for ``k = 1``)."""
        return self.basis[:, 0, :]

    @property
    def rank(self) -> int:
        """``k``: directions per layer."""
        return int(self.basis.shape[1])

    @property
    def d_model(self) -> int:
        """Width of the stream the directions live in."""
        return int(self.basis.shape[2])

    def _pos(self, layer: int) -> int:
        try:
            return self.layers.index(int(layer))
        except ValueError:
            raise SiteError(
                f"no direction for layer {layer}; layers: {list(self.layers)}"
            ) from None

    def __getitem__(self, layer: int) -> Float[Tensor, " d_model"]:
        """The (first) direction at ``layer``."""
        return self.basis[self._pos(layer), 0]

    def subspace(self, layer: int) -> Float[Tensor, "k d_model"]:
        """The orthonormal basis ``[k, d]`` at ``layer``."""
        return self.basis[self._pos(layer)]

    def select(self, layers: Iterable[int]) -> "Directions":
        """The directions of a subset of layers."""
        layers = [int(x) for x in layers]
        rows = torch.stack([self.subspace(layer) for layer in layers])
        meta = dict(self.meta)
        for key in (
            "stability",
            "stability_by_rank",
            "base_offset",
        ):  # per-layer lists follow the layers
            value = meta.get(key)
            if isinstance(value, list) and len(value) == len(self.layers):
                meta[key] = [value[self._pos(layer)] for layer in layers]
        return Directions(rows, tuple(layers), self.method, self.site, meta)

    def truncate(self, k: int) -> "Directions":
        """The first ``k`` directions of every layer (a rank-k sub-basis)."""
        if isinstance(k, bool) or not 1 <= int(k) <= self.rank:
            raise ConfigError(f"k={k} must be in 1..{self.rank} for these directions")
        k = int(k)
        meta = dict(self.meta)
        by_rank = meta.get("stability_by_rank")
        if (
            isinstance(by_rank, list)
            and by_rank
            and isinstance(by_rank[0], list)
            and len(by_rank[0]) >= k
        ):
            meta["stability"] = [row[k - 1] for row in by_rank]  # the stability of the first k rows
            meta["stability_by_rank"] = [row[:k] for row in by_rank]
        if isinstance(meta.get("base_offset"), list):
            meta["base_offset"] = [
                row[:k] if isinstance(row, list) else row for row in meta["base_offset"]
            ]
        return Directions(self.basis[:, :k].clone(), self.layers, self.method, self.site, meta)

    def check_d_model(self, d_model: int, what: str = "model") -> None:
        """Raise ShapeMismatchError unless the vectors live in R^d_model."""
        if self.d_model != d_model:
            raise ShapeMismatchError(
                f"directions ({self.method}) have d_model={self.d_model} but the {what} has d_model={d_model}"
            )

    def __repr__(self) -> str:
        k = f", k={self.rank}" if self.rank > 1 else ""
        return f"Directions(method={self.method!r}, layers={list(self.layers)}, d_model={self.d_model}{k})"

    # ------------------------------------------------------------------ persistence
    def save(self, path: PathLike) -> Path:
        """Write to a ``.safetensors`` file atomically (metadata: layers, method, site)."""
        from safetensors.torch import save_file

        from revlens._io import atomic_file

        out = Path(path)
        with atomic_file(out) as tmp:
            save_file(
                {"basis": self.basis.contiguous()},
                str(tmp),
                metadata={
                    "layers": json.dumps(list(self.layers)),
                    "method": self.method,
                    "site": self.site,
                    "meta": json.dumps(dict(self.meta), default=str),
                },
            )
        return out

    @classmethod
    def load(cls, path: PathLike) -> "Directions":
        """Inverse of :meth:`save` (files of revlens 0.1, holding ``vectors``, load too)."""
        from safetensors import safe_open

        try:
            with safe_open(str(Path(path)), framework="pt") as f:
                meta = f.metadata() or {}
                names = set(f.keys())
                basis = f.get_tensor("basis" if "basis" in names else "vectors")
        except Exception as exc:  # safetensors raises its own types on a bad file
            raise ConfigError(f"cannot read directions file {path}: {exc}") from None
        return cls(
            basis,
            tuple(json.loads(meta["layers"])),
            meta.get("method", "custom"),
            meta.get("site", "resid_post"),
            json.loads(meta.get("meta", "{}")),
        )
