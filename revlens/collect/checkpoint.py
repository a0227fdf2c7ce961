"""Per-checkpoint residual-stream statistics, reduced on the fly.

For each checkpoint and layer, :class:`CheckpointStats` keeps what every later stage needs
without keeping per-prompt activations of the fine-tuning checkpoints:

- ``count`` and ``mean`` (accumulated in float64, on the device the activations are on);
- ``boot_mean``: **Poisson-bootstrap** replicate means. Prompt ``i`` gets weight
  ``w_ib ~ Poisson(1)`` in replicate ``b``, drawn from a generator seeded by ``(seed, i)``, so the
  *same* prompt gets the *same* weight at every checkpoint and differences of replicate means are
  paired bootstrap replicates of the drift;
- ``second_moment`` (optional): the uncentred second moment, from which the covariance follows;
- ``refs`` (optional, reference checkpoints only): per-prompt activations in the model's dtype at
  the layers asked for, a :class:`~revlens.collect.store.ReferenceStore` kept in memory within a
  budget and in a file beyond it — needed by the paired-PCA and probe directions and Ledoit–Wolf
  whitening; ``mean_diff`` and whitening with a fixed shrinkage need only the sums.

Statistics merge exactly (sums), so prompt shards or checkpoints computed on different
workers combine into the result of one serial pass.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from revlens._types import PathLike
from revlens.collect.store import MemoryBudget, ReferenceStore
from revlens.errors import ConfigError, HistoryError

__all__ = ["STATS_FORMAT", "CheckpointStats", "PoissonTable", "poisson_weights"]

STATS_FORMAT = "revlens-stats/3"
"""Version of the statistics' meaning and layout (part of every cache key). 3: per-prompt
references ``refs [ref_layer, prompt, d]`` in the model's dtype at ``ref_layers``."""

_SUMS = ("total", "boot_total", "boot_count", "second")


def poisson_weights(indices: Tensor, n_bootstrap: int, seed: int) -> Float[Tensor, "batch boot"]:
    """Poisson(1) bootstrap weights for prompt ``indices``, a pure function of (seed, index)."""
    from revlens._seeds import derive

    out = torch.empty(len(indices), n_bootstrap, dtype=torch.float64)
    gen = torch.Generator()
    for row, idx in enumerate(indices.tolist()):
        gen.manual_seed(derive(seed, "poisson", int(idx)))
        out[row] = torch.poisson(torch.ones(n_bootstrap, dtype=torch.float64), generator=gen)
    return out


class PoissonTable:
    """:func:`poisson_weights` memoised per prompt index: drawn once per collect, not per
    checkpoint (every checkpoint uses the same weights by design). Kept as ``uint8`` counts
    (``n_bootstrap`` bytes per prompt)."""

    def __init__(self, n_bootstrap: int, seed: int) -> None:
        self.n_bootstrap, self.seed = int(n_bootstrap), int(seed)
        self._counts = torch.zeros(0, self.n_bootstrap, dtype=torch.uint8)
        self._have = torch.zeros(0, dtype=torch.bool)

    def __call__(self, indices: Tensor) -> Float[Tensor, "batch boot"]:
        idx = indices.to("cpu", torch.long)
        top = int(idx.max()) + 1 if len(idx) else 0
        if top > len(self._have):
            grow = top - len(self._have)
            self._counts = torch.cat(
                [self._counts, torch.zeros(grow, self.n_bootstrap, dtype=torch.uint8)]
            )
            self._have = torch.cat([self._have, torch.zeros(grow, dtype=torch.bool)])
        missing = idx[~self._have[idx]].unique()
        if len(missing):
            fresh = poisson_weights(missing, self.n_bootstrap, self.seed)
            if float(fresh.max()) > 255:  # pragma: no cover - P < 1e-400 per draw
                return poisson_weights(idx, self.n_bootstrap, self.seed)
            self._counts[missing] = fresh.to(torch.uint8)
            self._have[missing] = True
        return self._counts[idx].to(torch.float64)


def _accumulator_device(x: Tensor) -> torch.device:
    # sums stay where the activations are (float64 on CUDA is cheap; MPS has no float64)
    return x.device if x.device.type in ("cpu", "cuda") else torch.device("cpu")


@dataclass
class CheckpointStats:
    """Running sums for one checkpoint at ``n_layers`` sites (float64).

    Attributes:
        name: checkpoint name.
        layers: revlens layer indices, in order of the first axis.
        count: number of prompts.
        total: sum of reduced activations ``[layer, d]``.
        boot_total: Poisson-weighted sums ``[boot, layer, d]`` (or ``None``).
        boot_count: Poisson weight totals ``[boot]``.
        second: sum of outer products ``[layer, d, d]`` (or ``None``).
        refs: per-prompt references ``[ref_layer, prompt, d]`` (a :class:`ReferenceStore`, or ``None``).
        ref_layers: the layers ``refs`` holds (a subset of ``layers``, in their order).
    """

    name: str
    layers: list[int]
    count: int = 0
    total: Tensor | None = None
    boot_total: Tensor | None = None
    boot_count: Tensor | None = None
    second: Tensor | None = None
    refs: ReferenceStore | None = None
    ref_layers: list[int] | None = None
    _chunks: list[tuple[Tensor, Tensor]] = field(default_factory=list, repr=False)

    def start_refs(
        self,
        n_prompts: int,
        d: int,
        dtype: torch.dtype,
        *,
        layers: Sequence[int] | None = None,
        budget: MemoryBudget | None = None,
        spill_dir: PathLike | None = None,
    ) -> None:
        """Allocate the per-prompt store for ``n_prompts`` at ``layers`` (default: all) before
        :meth:`update` calls with ``keep=True`` write into it."""
        ref_layers = list(self.layers) if layers is None else [int(x) for x in layers]
        missing = [x for x in ref_layers if x not in self.layers]
        if missing:
            raise ConfigError(
                f"keep_layers {missing} are not among the collected layers {self.layers}"
            )
        self.ref_layers = [x for x in self.layers if x in ref_layers]
        self.refs = ReferenceStore.allocate(
            len(self.ref_layers), n_prompts, d, dtype, budget=budget, spill_dir=spill_dir
        )

    def update(
        self,
        x: Float[Tensor, "batch layer d"],
        indices: Tensor,
        *,
        n_bootstrap: int,
        seed: int,
        second: bool,
        keep: bool,
        weights: PoissonTable | Tensor | None = None,
    ) -> None:
        """Fold a batch of reduced activations (any float dtype, any device) into the sums.

        ``weights``: a :class:`PoissonTable` (or ``[batch, boot]`` tensor) to reuse across
        checkpoints; default: drawn here from ``(seed, index)``.
        """
        x = x.detach()
        dev = _accumulator_device(x)
        x64 = x.to(dev, torch.float64)
        if self.total is None:
            n_layer, d = x64.shape[1:]
            self.total = torch.zeros(n_layer, d, dtype=torch.float64, device=dev)
            if n_bootstrap:
                self.boot_total = torch.zeros(
                    n_bootstrap, n_layer, d, dtype=torch.float64, device=dev
                )
                self.boot_count = torch.zeros(n_bootstrap, dtype=torch.float64, device=dev)
            if second:
                self.second = torch.zeros(n_layer, d, d, dtype=torch.float64, device=dev)
        self.count += x64.shape[0]
        self.total += x64.sum(0)
        if self.boot_total is not None:
            if weights is None:
                w = poisson_weights(indices, self.boot_total.shape[0], seed)
            else:
                w = weights(indices) if callable(weights) else weights
            w = w.to(dev)
            self.boot_total += torch.einsum("nb,nld->bld", w, x64)
            self.boot_count += w.sum(0)
        if self.second is not None:
            self.second += torch.einsum("nli,nlj->lij", x64, x64)
        if keep:
            if self.refs is not None:
                pos = [self.layers.index(layer) for layer in self.ref_layers or []]
                self.refs.write(indices, x[:, pos] if len(pos) != x.shape[1] else x)
            else:
                self._chunks.append((indices.clone(), x.to("cpu")))

    def finalize(self) -> "CheckpointStats":
        """Move the sums to the CPU; assemble references kept without :meth:`start_refs`."""
        for key in _SUMS:
            value = getattr(self, key)
            if value is not None and value.device.type != "cpu":
                setattr(self, key, value.cpu())
        if self._chunks:
            idx = torch.cat([c[0] for c in self._chunks])
            acts = torch.cat([c[1] for c in self._chunks])[torch.argsort(idx)]
            self.refs = ReferenceStore.from_tensor(acts.transpose(0, 1))
            self.ref_layers = list(self.layers)
            self._chunks = []
        return self

    # ------------------------------------------------------------------ derived
    @property
    def activations(self) -> Float[Tensor, "prompt layer d"] | None:
        """Per-prompt references ``[prompt, layer, d]`` in memory, when kept at every layer
        (``None`` otherwise; read one layer at a time with :meth:`reference_layer`)."""
        if self.refs is None or self.ref_layers != self.layers:
            return None
        return self.refs.to_tensor().transpose(0, 1)

    @activations.setter
    def activations(self, value: Tensor | None) -> None:
        if value is None:
            self.refs, self.ref_layers = None, None
        else:
            self.refs, self.ref_layers = (
                ReferenceStore.from_tensor(value.transpose(0, 1)),
                list(self.layers),
            )

    def reference_layer(self, layer: int) -> Float[Tensor, "prompt d"] | None:
        """Per-prompt references at revlens ``layer`` (``None`` if not kept there)."""
        if self.refs is None or layer not in (self.ref_layers or []):
            return None
        return self.refs.layer(self.ref_layers.index(layer))  # type: ignore[union-attr]

    @property
    def mean(self) -> Float[Tensor, "layer d"]:
        """Mean activation per layer (float64)."""
        if self.total is None or self.count == 0:
            raise HistoryError(f"checkpoint {self.name}: no prompts were collected")
        return self.total / self.count

    @property
    def boot_mean(self) -> Float[Tensor, "boot layer d"] | None:
        """Bootstrap replicate means, or ``None`` if ``n_bootstrap=0``."""
        if self.boot_total is None:
            return None
        return self.boot_total / self.boot_count.clamp_min(1.0)[:, None, None]

    @property
    def covariance(self) -> Float[Tensor, "layer d d"]:
        """Unbiased covariance per layer (needs ``second`` moments)."""
        if self.second is None:
            raise ConfigError(
                f"checkpoint {self.name}: second moments were not collected (moments=...)"
            )
        mu = self.mean
        n = self.count
        return (self.second - n * torch.einsum("li,lj->lij", mu, mu)) / max(n - 1, 1)

    def merge(self, other: "CheckpointStats") -> "CheckpointStats":
        """Exact merge of two prompt shards of the same checkpoint (``self`` holds the earlier
        prompts: per-prompt references are joined in that order)."""
        if other.layers != self.layers:
            raise ConfigError(f"cannot merge stats over layers {self.layers} and {other.layers}")
        out = CheckpointStats(self.name, list(self.layers), self.count + other.count)

        def add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
            return None if a is None or b is None else a + b

        for key in _SUMS:
            setattr(out, key, add(getattr(self, key), getattr(other, key)))
        if self.refs is not None and other.refs is not None:
            if self.ref_layers != other.ref_layers:
                raise ConfigError(
                    f"cannot merge references kept at layers {self.ref_layers} and {other.ref_layers}"
                )
            out.refs, out.ref_layers = (
                ReferenceStore.concat([self.refs, other.refs]),
                list(self.ref_layers or []),
            )
        return out

    def select(self, layers: Sequence[int]) -> "CheckpointStats":
        """The statistics at a subset of ``layers`` (in that order)."""
        pos = [self.layers.index(x) for x in layers]
        out = CheckpointStats(self.name, [int(x) for x in layers], self.count)
        out.total = None if self.total is None else self.total[pos]
        out.boot_total = None if self.boot_total is None else self.boot_total[:, pos]
        out.boot_count = self.boot_count
        out.second = None if self.second is None else self.second[pos]
        if self.refs is not None:
            keep = [x for x in out.layers if x in (self.ref_layers or [])]
            if keep:
                out.refs = self.refs.select([self.ref_layers.index(x) for x in keep])  # type: ignore[union-attr]
                out.ref_layers = keep
        return out

    # ------------------------------------------------------------------ persistence
    def tensors(self) -> dict[str, Tensor]:
        """The sums (per-prompt references are streamed by :meth:`write`)."""
        out = {"count": torch.tensor([self.count], dtype=torch.int64)}
        for key in _SUMS:
            value = getattr(self, key)
            if value is not None:
                out[key] = value.contiguous()
        return out

    def write(self, path: PathLike, metadata: Mapping[str, str] | None = None) -> str:
        """Write to one safetensors file (references streamed, never all in memory); returns its
        checksum."""
        from revlens.collect.files import write_stats_file

        tensors: dict[str, Any] = dict(self.tensors())
        if self.refs is not None:
            tensors["refs"] = self.refs
        meta = {
            **(metadata or {}),
            "layers": json.dumps(self.layers),
            "ref_layers": json.dumps(self.ref_layers),
        }
        return write_stats_file(path, tensors, meta)

    @classmethod
    def read(
        cls, path: PathLike, name: str, *, verify: bool = True
    ) -> tuple["CheckpointStats", dict[str, str]]:
        """Inverse of :meth:`write` (references stay in the file): ``(stats, metadata)``."""
        from revlens.collect.files import read_stats_file

        meta, tensors = read_stats_file(path, verify=verify)
        out = cls.from_tensors(name, json.loads(meta["layers"]), tensors)
        out.ref_layers = (
            json.loads(meta.get("ref_layers") or "null") if out.refs is not None else None
        )
        return out, meta

    @classmethod
    def from_tensors(
        cls, name: str, layers: list[int], tensors: Mapping[str, Any]
    ) -> "CheckpointStats":
        """Inverse of :meth:`tensors` (``refs`` a store ``[ref_layer, prompt, d]`` at every layer
        unless told otherwise; ``activations`` ``[prompt, layer, d]`` as in format 2)."""
        out = cls(name, list(layers), int(tensors["count"][0]))
        for key in _SUMS:
            setattr(out, key, tensors.get(key))
        refs = tensors.get("refs")
        if refs is not None:
            out.refs = (
                refs if isinstance(refs, ReferenceStore) else ReferenceStore.from_tensor(refs)
            )
            out.ref_layers = list(layers)
        elif tensors.get("activations") is not None:
            out.activations = tensors["activations"]
        return out
