"""Per-checkpoint residual-stream statistics, reduced on the fly.

For each checkpoint and layer, :class:`CheckpointStats` keeps what every later stage needs
without keeping per-prompt activations of the fine-tuning checkpoints:

- ``count`` and ``mean`` (accumulated in float64);
- ``boot_mean``: **Poisson-bootstrap** replicate means. Prompt ``i`` gets weight
  ``w_ib ~ Poisson(1)`` in replicate ``b``, drawn from a generator seeded by ``(seed, i)``, so the
  *same* prompt gets the *same* weight at every checkpoint and differences of replicate means are
  paired bootstrap replicates of the drift;
- ``second_moment`` (optional): the uncentred second moment, from which the covariance follows;
- ``activations`` (optional, reference checkpoints only): per-prompt activations, needed by
  the paired-PCA and probe directions.

Statistics merge exactly (sums), so prompt shards or checkpoints computed on different
workers combine into the result of one serial pass.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from revlens.errors import CacheError, ConfigError, HistoryError

__all__ = ["STATS_FORMAT", "CheckpointStats", "HistoryStats", "poisson_weights"]

STATS_FORMAT = "revlens-stats/2"
"""Version of the statistics' meaning and layout (part of every cache key)."""


def poisson_weights(indices: Tensor, n_bootstrap: int, seed: int) -> Float[Tensor, "batch boot"]:
    """Poisson(1) bootstrap weights for prompt ``indices``, a pure function of (seed, index)."""
    from revlens._seeds import derive

    out = torch.empty(len(indices), n_bootstrap, dtype=torch.float64)
    gen = torch.Generator()
    for row, idx in enumerate(indices.tolist()):
        gen.manual_seed(derive(seed, "poisson", int(idx)))
        out[row] = torch.poisson(torch.ones(n_bootstrap, dtype=torch.float64), generator=gen)
    return out


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
        activations: per-prompt activations ``[prompt, layer, d]`` float32 (or ``None``).
    """

    name: str
    layers: list[int]
    count: int = 0
    total: Tensor | None = None
    boot_total: Tensor | None = None
    boot_count: Tensor | None = None
    second: Tensor | None = None
    activations: Tensor | None = None
    _chunks: list[tuple[Tensor, Tensor]] = field(default_factory=list, repr=False)

    def update(self, x: Float[Tensor, "batch layer d"], indices: Tensor, *, n_bootstrap: int, seed: int,
               second: bool, keep: bool) -> None:
        """Fold a batch of reduced activations (any float dtype) into the sums."""
        x64 = x.detach().to("cpu", torch.float64)
        if self.total is None:
            n_layer, d = x64.shape[1:]
            self.total = torch.zeros(n_layer, d, dtype=torch.float64)
            if n_bootstrap:
                self.boot_total = torch.zeros(n_bootstrap, n_layer, d, dtype=torch.float64)
                self.boot_count = torch.zeros(n_bootstrap, dtype=torch.float64)
            if second:
                self.second = torch.zeros(n_layer, d, d, dtype=torch.float64)
        self.count += x64.shape[0]
        self.total += x64.sum(0)
        if self.boot_total is not None:
            w = poisson_weights(indices, self.boot_total.shape[0], seed)
            self.boot_total += torch.einsum("nb,nld->bld", w, x64)
            self.boot_count += w.sum(0)
        if self.second is not None:
            self.second += torch.einsum("nli,nlj->lij", x64, x64)
        if keep:
            self._chunks.append((indices.clone(), x.detach().to("cpu", torch.float32)))

    def finalize(self) -> "CheckpointStats":
        """Assemble kept activations in prompt order."""
        if self._chunks:
            idx = torch.cat([c[0] for c in self._chunks])
            acts = torch.cat([c[1] for c in self._chunks])
            self.activations = acts[torch.argsort(idx)]
            self._chunks = []
        return self

    # ------------------------------------------------------------------ derived
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
            raise ConfigError(f"checkpoint {self.name}: second moments were not collected (moments=...)")
        mu = self.mean
        n = self.count
        return (self.second - n * torch.einsum("li,lj->lij", mu, mu)) / max(n - 1, 1)

    def merge(self, other: "CheckpointStats") -> "CheckpointStats":
        """Exact merge of two prompt shards of the same checkpoint."""
        if other.layers != self.layers:
            raise ConfigError(f"cannot merge stats over layers {self.layers} and {other.layers}")
        out = CheckpointStats(self.name, list(self.layers), self.count + other.count)

        def add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
            return None if a is None or b is None else a + b

        out.total = add(self.total, other.total)
        out.boot_total = add(self.boot_total, other.boot_total)
        out.boot_count = add(self.boot_count, other.boot_count)
        out.second = add(self.second, other.second)
        if self.activations is not None and other.activations is not None:
            out.activations = torch.cat([self.activations, other.activations])
        return out

    def tensors(self) -> dict[str, Tensor]:
        """All tensors, for serialisation."""
        out = {"count": torch.tensor([self.count], dtype=torch.int64)}
        for key in ("total", "boot_total", "boot_count", "second", "activations"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value.contiguous()
        return out

    @classmethod
    def from_tensors(cls, name: str, layers: list[int], tensors: Mapping[str, Tensor]) -> "CheckpointStats":
        """Inverse of :meth:`tensors`."""
        out = cls(name, list(layers), int(tensors["count"][0]))
        for key in ("total", "boot_total", "boot_count", "second", "activations"):
            setattr(out, key, tensors.get(key))
        return out


class HistoryStats:
    """Statistics of every checkpoint of a history at the collected sites.

    Attributes:
        layers: revlens layer indices (axis 1 of every ``[.., layer, d]`` tensor).
        site: site kind (``"resid_post"`` ...).
        position: the position rule used.
        checkpoints: name -> :class:`CheckpointStats`.
        roles: name -> ``(role, run, step)``.
        run_starts: run name -> name of the checkpoint its drift is measured from.
        controls: names of control runs.
        kinds: run name -> kind (``"run"``, ``"control"``, ``"blocked"``...).
    """

    def __init__(self, *, layers: list[int], site: str, position: str, d_model: int,
                 checkpoints: Mapping[str, CheckpointStats], roles: Mapping[str, tuple[str, str | None, int | None]],
                 run_starts: Mapping[str, str], controls: Iterable[str] = (), meta: Mapping[str, Any] | None = None,
                 kinds: Mapping[str, str] | None = None) -> None:
        self.layers = list(layers)
        self.site = site
        self.position = position
        self.d_model = int(d_model)
        self.checkpoints = dict(checkpoints)
        self.roles = dict(roles)
        self.run_starts = dict(run_starts)
        self.controls = set(controls)
        self.meta: dict[str, Any] = dict(meta or {})
        self.kinds = {r: (kinds or {}).get(r, "control" if r in self.controls else "run") for r in self.runs}

    # ------------------------------------------------------------------ roles
    @property
    def base_names(self) -> list[str]:
        return [n for n, r in self.roles.items() if r[0] == "base"]

    @property
    def aligned_name(self) -> str:
        return next(n for n, r in self.roles.items() if r[0] == "aligned")

    @property
    def runs(self) -> dict[str, dict[int, str]]:
        """run -> {step: checkpoint name}, steps sorted."""
        out: dict[str, dict[int, str]] = {}
        for n, (role, run, step) in self.roles.items():
            if role == "run" and run is not None and step is not None:
                out.setdefault(run, {})[step] = n
        return {r: dict(sorted(s.items())) for r, s in out.items()}

    def layer_pos(self, layer: int) -> int:
        """Position of revlens ``layer`` along the layer axis."""
        if layer not in self.layers:
            from revlens.errors import SiteError

            raise SiteError(f"layer {layer} was not collected; collected layers: {self.layers}")
        return self.layers.index(layer)

    def __getitem__(self, name: str) -> CheckpointStats:
        try:
            return self.checkpoints[name]
        except KeyError:
            raise KeyError(f"no statistics for checkpoint {name!r}; have {list(self.checkpoints)}") from None

    def mean(self, name: str) -> Float[Tensor, "layer d"]:
        """Mean activation of checkpoint ``name`` (float64)."""
        return self[name].mean

    def base_mean(self) -> Float[Tensor, "layer d"]:
        """Mean over the base checkpoints of their means (how several bases combine)."""
        return torch.stack([self.mean(n) for n in self.base_names]).mean(0)

    def base_activations(self) -> Float[Tensor, "prompt layer d"]:
        """Per-prompt activations averaged over base checkpoints (paired with aligned's)."""
        acts = [self[n].activations for n in self.base_names]
        if any(a is None for a in acts):
            raise ConfigError("per-prompt activations of the base checkpoints were not kept (keep=...)")
        return torch.stack(acts).mean(0)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        runs = self.runs
        return (f"HistoryStats({len(self.checkpoints)} checkpoints, layers={self.layers}, site={self.site!r}, "
                f"position={self.position!r}, d_model={self.d_model}, runs={list(runs)}, "
                f"prompts={self.meta.get('n_prompts')})")

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Any) -> Path:
        """Write to ``directory`` atomically (``stats.json`` + one safetensors file per checkpoint)."""
        from safetensors.torch import save_file

        from revlens._io import publish_dir, write_json

        with publish_dir(directory) as d:
            files = {}
            for i, (name, st) in enumerate(self.checkpoints.items()):
                fname = f"ckpt-{i:04d}.safetensors"
                save_file(st.tensors(), str(d / fname))
                files[name] = fname
            meta = {"format": STATS_FORMAT, "layers": self.layers, "site": self.site, "position": self.position,
                    "d_model": self.d_model, "roles": {k: list(v) for k, v in self.roles.items()},
                    "run_starts": self.run_starts, "controls": sorted(self.controls), "kinds": self.kinds,
                    "files": files, "meta": self.meta}
            write_json(d / "stats.json", meta)
        return Path(directory)

    @classmethod
    def load(cls, directory: Any) -> "HistoryStats":
        """Inverse of :meth:`save` (refuses an incomplete or foreign directory, naming the file)."""
        from safetensors.torch import load_file

        from revlens._io import check_manifest, confined, read_json

        d = Path(directory)
        if not (d / "stats.json").is_file():
            raise CacheError(f"{d} holds no saved statistics (stats.json)")
        check_manifest(d, "saved statistics")
        meta = read_json(d / "stats.json", "saved statistics", error=CacheError)
        if meta.get("format") != STATS_FORMAT:
            raise CacheError(f"{d / 'stats.json'} has format {meta.get('format')!r}; expected {STATS_FORMAT!r}")
        cks = {n: CheckpointStats.from_tensors(n, meta["layers"], load_file(str(confined(d, f, "saved statistics"))))
               for n, f in meta["files"].items()}
        roles = {k: (v[0], v[1], v[2]) for k, v in meta["roles"].items()}
        return cls(layers=meta["layers"], site=meta["site"], position=meta["position"], d_model=meta["d_model"],
                   checkpoints=cks, roles=roles, run_starts=meta["run_starts"], controls=meta["controls"],
                   meta=meta["meta"], kinds=meta.get("kinds"))
