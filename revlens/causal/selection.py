"""Which checkpoints and layers an ablation study intervenes on (the ``"auto"`` defaults:
log-spaced steps with the last; the layers that moved furthest along v_rev), and the reference
statistics and v_rev there. A mixin of the study (:mod:`revlens.causal.study`)."""

from typing import Any

from revlens.causal.config import AblationConfig
from revlens.causal.inputs import reference_stats, select_checkpoints
from revlens.causal.kinds import of_test
from revlens.causal.plan import auto_layers, auto_steps, drift_scores
from revlens.collect import HistoryStats, collect, collect_checkpoint, without_degenerate
from revlens.directions import Directions, resolve_directions
from revlens.errors import HistoryError
from revlens.history import Checkpoint, History
from revlens.model import LensModel
from revlens.probes import TokenizedProbes
from revlens.sites import Site, SiteAccess

__all__ = ["Selection"]


class Selection:
    """The study's choice of checkpoints and layers (``self.cfg``, ``hist``, ``lm``, ``acc``,
    ``tokenized`` and ``checkpoints`` are the study's)."""

    cfg: AblationConfig
    hist: History
    lm: LensModel
    acc: SiteAccess
    tokenized: TokenizedProbes
    checkpoints: list[Checkpoint]
    choices: dict[str, str]
    degenerate: dict[int, list[str]]
    k_max: int

    def _select_checkpoints(self) -> list[Checkpoint]:
        cfg, hist = self.cfg, self.hist
        if not of_test(
            cfg.kinds, "necessity"
        ):  # sufficiency tests (steer) run on the aligned model only
            return []
        runs = list(cfg.runs) or None
        if cfg.steps == "auto":
            chosen = auto_steps(hist, runs, cfg.auto_steps)
            self.choices["steps"] = (
                f"auto: {cfg.auto_steps} log-spaced per run incl. the last "
                f"({', '.join(f'{r} {s}' for r, s in chosen.items())}); --steps all for every step"
            )
            out = [c for r, steps in chosen.items() for c in select_checkpoints(hist, [r], steps)]
        else:
            out = select_checkpoints(hist, runs, None if cfg.steps == "all" else cfg.steps)
        if not out:
            raise HistoryError(
                f"no fine-tuning checkpoint selected for {', '.join(of_test(cfg.kinds, 'necessity'))} "
                "(runs=..., steps=...)"
            )
        return out

    def _select_layers(
        self, probes: Any, stats: HistoryStats | None, spec: Any
    ) -> tuple[list[Site], HistoryStats, Directions]:
        """The studied sites, the reference statistics there and v_rev (``layers="auto"``: the
        layers whose last-step drift is most aligned with v_rev)."""
        cfg, lm = self.cfg, self.lm
        bad: dict[int, list[str]] = {}
        if cfg.layers != "auto":
            sites = self.acc.sites(cfg.layers, cfg.site)
        elif stats is not None or isinstance(spec, Directions):
            given = spec.layers if isinstance(spec, Directions) else stats.layers  # type: ignore[union-attr]
            sites = self.acc.sites(
                [x for x in given if stats is None or x in stats.layers], cfg.site
            )
        else:
            sites = self.acc.sites("all", cfg.site)
            if len(sites) > cfg.auto_layers:
                # per-prompt references too: degenerate layers are told apart (and never chosen) here
                means = collect(
                    self.hist.restricted(),
                    probes,
                    model=lm,
                    layers=[s.layer for s in sites],
                    site=cfg.site,
                    n_bootstrap=0,
                    moments="none",
                    keep="reference",
                    batch_size=cfg.batch_size,
                    progress=False,
                )
                means, bad = without_degenerate(means, what="ablation_study", stacklevel=6)
                sites = [s for s in sites if s.layer not in bad]
                chosen = self._auto_layers(means, sites, spec)  # once, not once per site
                sites = [s for s in sites if s.layer in chosen]
        layers = [s.layer for s in sites]
        if stats is None:
            stats = reference_stats(self.hist, probes, lm, layers, cfg.batch_size, cfg.site)
        for layer in layers:
            stats.layer_pos(layer)
        stats, later = without_degenerate(stats, what="ablation_study", layers=layers, stacklevel=5)
        self.degenerate = {**bad, **later}
        if later:  # constant over the probes: no covariance, no cov controls; left out
            sites = [s for s in sites if s.layer not in later]
            layers = [s.layer for s in sites]
        v_rev = resolve_directions(
            spec, stats, layers=layers, d_model=lm.d_model, n_components=self.k_max
        )
        if (
            cfg.layers == "auto" and len(layers) > cfg.auto_layers
        ):  # statistics given: choose among theirs
            chosen = self._auto_layers(stats, sites, v_rev)
            sites = [s for s in sites if s.layer in chosen]
            v_rev = v_rev.select(chosen)
        return sites, stats, v_rev

    def _auto_layers(self, stats: HistoryStats, sites: list[Site], spec: Any) -> list[int]:
        layers = [s.layer for s in sites]
        v = resolve_directions(spec, stats, layers=layers, d_model=self.lm.d_model)
        last: dict[str, Checkpoint] = {}
        for ck in self.checkpoints:
            if ck.run not in last or int(ck.step) > int(last[ck.run].step):  # type: ignore[arg-type]
                last[str(ck.run)] = ck
        if not last:
            return layers[: self.cfg.auto_layers]
        means = [
            collect_checkpoint(self.lm, ck, self.tokenized, sites, n_bootstrap=0).mean
            for ck in last.values()
        ]
        start = stats.mean(stats.aligned_name)[[stats.layer_pos(x) for x in layers]]
        scores = drift_scores(means, start, v.vectors, layers)
        chosen = auto_layers(scores, self.cfg.auto_layers)
        self.choices["layers"] = (
            f"auto: the {self.cfg.auto_layers} of {len(layers)} layers that moved furthest along "
            f"v_rev by the last step (mean drift·v_rev: "
            + ", ".join(f"{k}: {v:.3f}" for k, v in scores.items())
            + "); --layers all for every layer"
        )
        return chosen
