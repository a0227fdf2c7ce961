"""Statistics of a whole history: one :class:`~revlens.collect.checkpoint.CheckpointStats` per
checkpoint, the roles, and atomic save / load (see :mod:`revlens.collect.checkpoint` for what
each checkpoint keeps)."""

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from revlens._types import PathLike
from revlens.collect.checkpoint import STATS_FORMAT, CheckpointStats, PoissonTable, poisson_weights
from revlens.errors import CacheError, ConfigError
from revlens.modes import SiteKind

__all__ = ["STATS_FORMAT", "CheckpointStats", "HistoryStats", "PoissonTable", "poisson_weights"]


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

    def __init__(
        self,
        *,
        layers: list[int],
        site: SiteKind,
        position: str,
        d_model: int,
        checkpoints: Mapping[str, CheckpointStats],
        roles: Mapping[str, tuple[str, str | None, int | None]],
        run_starts: Mapping[str, str],
        controls: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
        kinds: Mapping[str, str] | None = None,
    ) -> None:
        self.layers = list(layers)
        self.site = site
        self.position = position
        self.d_model = int(d_model)
        self.checkpoints = dict(checkpoints)
        self.roles = dict(roles)
        self.run_starts = dict(run_starts)
        self.controls = set(controls)
        self.meta: dict[str, Any] = dict(meta or {})
        self.kinds = {
            r: (kinds or {}).get(r, "control" if r in self.controls else "run") for r in self.runs
        }

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
            raise KeyError(
                f"no statistics for checkpoint {name!r}; have {list(self.checkpoints)}"
            ) from None

    def mean(self, name: str) -> Float[Tensor, "layer d"]:
        """Mean activation of checkpoint ``name`` (float64)."""
        return self[name].mean

    def base_mean(self) -> Float[Tensor, "layer d"]:
        """Mean over the base checkpoints of their means (how several bases combine)."""
        return torch.stack([self.mean(n) for n in self.base_names]).mean(0)

    def base_activations(self) -> Float[Tensor, "prompt layer d"]:
        """Per-prompt activations averaged over base checkpoints (paired with aligned's), in
        memory; at scale read one layer at a time with :meth:`paired_references`."""
        acts = [self[n].activations for n in self.base_names]
        if any(a is None for a in acts):
            raise ConfigError(
                "per-prompt activations of the base checkpoints were not kept at every layer (keep=...)"
            )
        return torch.stack([a.to(torch.float64) for a in acts]).mean(0)  # type: ignore[union-attr]

    def has_references(self, layers: Sequence[int] | None = None) -> bool:
        """Whether base and aligned kept per-prompt references at ``layers`` (default: all)."""
        wanted = self.layers if layers is None else list(layers)
        names = [*self.base_names, self.aligned_name]
        return all(
            self[n].refs is not None and set(wanted) <= set(self[n].ref_layers or []) for n in names
        )

    def paired_references(
        self, layer: int
    ) -> tuple[Float[Tensor, "prompt d"], Float[Tensor, "prompt d"]]:
        """``(base, aligned)`` per-prompt references at revlens ``layer`` in float64 (base: the
        mean over base checkpoints), read one layer at a time (from disk where spilled).

        Raises:
            ConfigError: not kept at ``layer`` (names the layers that were).
        """
        rows = []
        for n in [*self.base_names, self.aligned_name]:
            x = self[n].reference_layer(layer)
            if x is None:
                kept = self[n].ref_layers
                raise ConfigError(
                    f"per-prompt references of {n} were not kept at layer {layer} "
                    f"({'kept at ' + str(kept) if kept else 'none kept'}); collect with keep='reference' "
                    "(and keep_layers including it), or fit on stats.select(layers)"
                )
            rows.append(x.to(torch.float64))
        return torch.stack(rows[:-1]).mean(0), rows[-1]

    @classmethod
    def combine(cls, parts: Sequence["HistoryStats"]) -> "HistoryStats":
        """One history's statistics from parts computed separately (SLURM array tasks, one run or
        one slice of steps each; ``docs/scale.md``): checkpoints are taken from whichever part has
        them; a checkpoint in several parts (base and aligned, typically) must agree there (to
        1e-5 relative: GPU kernels are not bit-reproducible between jobs). Per-prompt shards of one
        checkpoint merge with :meth:`CheckpointStats.merge` instead.

        Raises:
            ConfigError: parts on other layers, site, position, probes, bootstrap or architecture,
                or a checkpoint whose statistics differ between parts.
        """
        if isinstance(parts, (str, bytes, HistoryStats)) or not hasattr(parts, "__iter__"):
            raise ConfigError(f"combine needs a list of HistoryStats, got {type(parts).__name__}")
        parts = list(parts)
        if not parts:
            raise ConfigError("combine needs at least one HistoryStats")
        bad = [
            (i, type(p).__name__) for i, p in enumerate(parts) if not isinstance(p, HistoryStats)
        ]
        if bad:
            raise ConfigError(
                f"combine: part {bad[0][0]} is a {bad[0][1]}, not a HistoryStats "
                "(load saved statistics with HistoryStats.load)"
            )
        first = parts[0]
        keys = ("probe_fingerprint", "n_bootstrap", "bootstrap_seed", "architecture")
        for p in parts[1:]:
            same = (
                p.layers == first.layers
                and p.site == first.site
                and p.position == first.position
                and p.d_model == first.d_model
                and all(p.meta.get(k) == first.meta.get(k) for k in keys)
            )
            if not same:
                raise ConfigError(
                    "cannot combine statistics collected with other layers, site, position, probes, "
                    "bootstrap or architecture"
                )
        checkpoints: dict[str, CheckpointStats] = {}
        roles: dict[str, tuple[str, str | None, int | None]] = {}
        starts, kinds, controls = {}, {}, set()
        for p in parts:
            for name, st in p.checkpoints.items():
                if name in checkpoints:
                    _check_same(checkpoints[name], st)
                    continue
                checkpoints[name], roles[name] = st, p.roles[name]
            starts.update(p.run_starts)
            kinds.update(p.kinds)
            controls |= p.controls
        return cls(
            layers=first.layers,
            site=first.site,
            position=first.position,
            d_model=first.d_model,
            checkpoints=checkpoints,
            roles=roles,
            run_starts=starts,
            controls=controls,
            meta=first.meta,
            kinds=kinds,
        )

    def select(self, layers: Sequence[int]) -> "HistoryStats":
        """The same history at a subset of its layers."""
        for layer in layers:
            self.layer_pos(layer)
        return HistoryStats(
            layers=list(layers),
            site=self.site,
            position=self.position,
            d_model=self.d_model,
            checkpoints={n: st.select(layers) for n, st in self.checkpoints.items()},
            roles=self.roles,
            run_starts=self.run_starts,
            controls=self.controls,
            meta=self.meta,
            kinds=self.kinds,
        )

    def __repr__(self) -> str:
        runs = self.runs
        return (
            f"HistoryStats({len(self.checkpoints)} checkpoints, layers={self.layers}, site={self.site!r}, "
            f"position={self.position!r}, d_model={self.d_model}, runs={list(runs)}, "
            f"prompts={self.meta.get('n_prompts')})"
        )

    # ------------------------------------------------------------------ persistence
    def save(self, directory: PathLike) -> Path:
        """Write to ``directory`` atomically (``stats.json`` + one safetensors file per checkpoint;
        per-prompt references are streamed into them, never all in memory)."""
        from revlens._io import publish_dir, write_json

        with publish_dir(directory) as d:
            files = {}
            for i, (name, st) in enumerate(self.checkpoints.items()):
                fname = f"ckpt-{i:04d}.safetensors"
                st.write(d / fname, {"name": name})
                files[name] = fname
            meta = {
                "format": STATS_FORMAT,
                "layers": self.layers,
                "site": self.site,
                "position": self.position,
                "d_model": self.d_model,
                "roles": {k: list(v) for k, v in self.roles.items()},
                "run_starts": self.run_starts,
                "controls": sorted(self.controls),
                "kinds": self.kinds,
                "files": files,
                "meta": self.meta,
            }
            write_json(d / "stats.json", meta)
        return Path(directory)

    @classmethod
    def load(cls, directory: PathLike) -> "HistoryStats":
        """Inverse of :meth:`save` (refuses an incomplete, altered or foreign directory, naming the
        file); per-prompt references stay in their files, read a layer at a time."""
        from revlens._io import check_manifest, read_json

        d = Path(directory)
        if not (d / "stats.json").is_file():
            raise CacheError(f"{d} holds no saved statistics (stats.json)")
        check_manifest(d, "saved statistics")
        meta = read_json(d / "stats.json", "saved statistics", error=CacheError)
        if not isinstance(meta, dict):
            raise CacheError(
                f"{d / 'stats.json'} must hold a JSON object, got {type(meta).__name__}"
            )
        if meta.get("format") != STATS_FORMAT:
            raise CacheError(
                f"{d / 'stats.json'} has format {meta.get('format')!r}; expected {STATS_FORMAT!r}"
            )
        try:
            return cls._from_meta(d, meta)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise CacheError(
                f"{d / 'stats.json'}: a missing or malformed field ({type(exc).__name__}: {exc})"
            ) from None

    @classmethod
    def _from_meta(cls, d: Path, meta: dict[str, Any]) -> "HistoryStats":
        from revlens._io import confined

        cks = {}
        for n, f in meta["files"].items():
            path = confined(d, f, "saved statistics")
            try:
                cks[n] = CheckpointStats.read(path, n)[0]
            except (ValueError, KeyError, OSError) as exc:
                raise CacheError(f"saved statistics {path}: {exc}") from None
        roles = {k: (v[0], v[1], v[2]) for k, v in meta["roles"].items()}
        return cls(
            layers=meta["layers"],
            site=meta["site"],
            position=meta["position"],
            d_model=meta["d_model"],
            checkpoints=cks,
            roles=roles,
            run_starts=meta["run_starts"],
            controls=meta["controls"],
            meta=meta["meta"],
            kinds=meta.get("kinds"),
        )


def _check_same(a: CheckpointStats, b: CheckpointStats) -> None:
    ta, tb = a.tensors(), b.tensors()
    # up to float noise: GPU kernels are not bit-reproducible from one job to the next
    if set(ta) != set(tb) or any(
        not torch.allclose(ta[k].double(), tb[k].double(), rtol=1e-5, atol=1e-6) for k in ta
    ):
        raise ConfigError(
            f"checkpoint {a.name} has different statistics in two parts (other weights or settings?)"
        )
