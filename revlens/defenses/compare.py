"""``revlens.compare_defenses``: every defense, and its random control, on the same fine-tuning runs.

On a history's aligned checkpoint (and its base: ``V = W_aligned − W_base``, ``v_rev``), a
:class:`~revlens.defenses.recipe.FinetuneRecipe` is repeated for each seed undefended and with each
defense of :mod:`revlens.defenses.suite`, published and as its random control; the batches depend only
on the seed. Each run is scored by :class:`~revlens.defenses.bench.Scorer` (harm with its Wilson
interval and trajectory, over-refusal, KL to aligned, task, drift along ``v_rev`` and ``r``, the
weight-space reverted fraction), timed, and its peak memory sampled. Nothing here knows the lab: any
history of ``save_pretrained`` dirs works (``docs/defenses.md``).

**Resumable**: with ``out=``, each (defense, control, seed) result is written atomically to
``out/runs/<defense>[-control]/seed<k>-<key>.json``; ``<key>`` hashes everything that changes it (the
history's weights, the recipe, the evaluation sets, the defense's settings, the seed, the format), so a
rerun skips what is done and recomputes what changed.
"""

import copy
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, no_type_check

import torch
from tqdm.auto import tqdm

from revlens._io import check_writable_dir, read_json, write_json
from revlens.defenses.bench import EvalSets, Scorer
from revlens.defenses.chatprep import render_sets
from revlens.defenses.comparison import DefenseComparison, machine
from revlens.defenses.data import read_pairs
from revlens.defenses.recipe import FinetuneRecipe
from revlens.defenses.suite import CompareConfig, Context, build_defense
from revlens.directions import Directions
from revlens.errors import ConfigError, ProbeError

__all__ = ["compare_defenses"]

log = logging.getLogger(__name__)
FORMAT = "revlens-defense-run/1"


class PeakMemory:
    """Peak memory of a block: CUDA's allocator peak, else the process's resident set sampled every
    5 ms (its growth over the block's start, MB; the allocator keeps freed pages, so a run after a
    larger one may show less)."""

    def __init__(self, device: Any = None) -> None:
        self.cuda = device is not None and torch.device(device).type == "cuda"
        self.peak_mb = float("nan")

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return self
        try:
            self.start = self.top = self._rss()
        except OSError:  # not Linux: no sampling
            self.start = None
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.top = max(self.top, self._rss())

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        elif self.start is not None:
            self._stop.set()
            self._thread.join()
            self.top = max(self.top, self._rss())
            self.peak_mb = self.top - self.start


def _load(ck: Any, what: str, tokenizer: Any) -> tuple[Path, torch.nn.Module]:
    from transformers import AutoModelForCausalLM

    from revlens.defenses.chatprep import full_dir

    path = full_dir(ck, what, tokenizer)
    return path, AutoModelForCausalLM.from_pretrained(str(path)).eval()


def _subspace(
    scorer: Scorer, base: torch.nn.Module, aligned: torch.nn.Module, v: Directions, k: int
) -> Directions:
    """Top-k principal axes of the paired (base − aligned) activations per layer, oriented toward base."""
    from revlens.sites import access

    tp = scorer.tok["probes"]
    mask = (torch.arange(tp.tokens.shape[1])[None] < tp.lengths[:, None]).long()
    with torch.no_grad():
        reads = [
            torch.stack(
                access(m).read(tp.tokens, tp.weights, access(m).sites(scorer.layers), mask=mask), 1
            )
            for m in (base, aligned)
        ]
    diffs = (reads[0] - reads[1]).double()  # [prompt, layer, d]
    rows = []
    for i in range(len(scorer.layers)):
        _, _, vh = torch.linalg.svd(diffs[:, i], full_matrices=False)
        b = vh[: min(k, vh.shape[0])]
        b = b * torch.sign(b @ v.vectors[i].double()).clamp(min=0).mul(2).sub(1)[:, None]
        rows.append(b)
    return Directions.from_tensor(torch.stack(rows), scorer.layers, method="pca")


def _refusal(aligned: torch.nn.Module, sets: EvalSets, layers: list[int]) -> Directions:
    from revlens.defenses.chatprep import refusal_probes
    from revlens.directions import refusal_directions

    probes, position = refusal_probes(sets)
    found = refusal_directions(copy.deepcopy(aligned), probes, position=position, layers=layers)
    r = found[found.positions[-1]]  # "last", or the last post-instruction token ("-1")
    return r.select([layer for layer in layers if layer in r.layers])


def _safety(aligned: torch.nn.Module, tokenizer: Any, sets: EvalSets) -> tuple[int, int] | None:
    from revlens.defenses import locate_safety_layers
    from revlens.defenses.chatprep import locator_texts

    tok = copy.copy(tokenizer)
    tok.padding_side = "right"
    try:
        found = locate_safety_layers(
            aligned,
            tok,
            locator_texts(sets.harmless, tokenizer),
            locator_texts(sets.probes, tokenizer),
        )
    except ProbeError as exc:
        log.warning("safety layers not located: %s", exc)
        return None
    return found.first, found.last


def _weight_fraction(base_dir: Path, aligned_dir: Path) -> Any:
    from revlens.weights.catalog import build_catalog
    from revlens.weights.readers import FullReader

    def measure(model: torch.nn.Module) -> dict[str, float]:
        catalog = build_catalog(model.config)
        params = dict(model.named_parameters())
        base, aligned = (
            FullReader(base_dir, "base", catalog),
            FullReader(aligned_dir, "aligned", catalog),
        )
        dot = v2 = d2 = 0.0
        try:
            for name, p in catalog.params.items():
                if not p.is_matrix or name not in params:
                    continue
                w_a = aligned.read(p).double()
                v = w_a - base.read(p).double()
                w = params[name].detach().double()
                dw = (w.T if p.transpose else w) - w_a
                dot, v2, d2 = (
                    dot + float((dw * v).sum()),
                    v2 + float((v * v).sum()),
                    d2 + float((dw * dw).sum()),
                )
        finally:
            base.close()
            aligned.close()
        return {
            "reverted_fraction": -dot / v2 if v2 else float("nan"),
            "cos_dw_minus_v": -dot / (v2 * d2) ** 0.5 if v2 and d2 else float("nan"),
        }

    return measure


def _key(parts: dict[str, Any]) -> str:
    return hashlib.blake2b(
        json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=8
    ).hexdigest()


def _run(
    ctx: Context,
    scorer: Scorer,
    cfg: CompareConfig,
    name: str,
    control: bool,
    seed: int,
    v: Directions,
    r: Directions,
    weights: Any,
    device: Any,
) -> dict[str, Any]:
    """One fine-tune, scored: the row of the table (and its trajectory)."""
    recipe = ctx.recipe
    strategies = [] if name == "none" else build_defense(name, ctx, cfg, control=control, seed=seed)
    n = cfg.trajectory_points
    points = sorted({max(1, round(recipe.steps * (i + 1) / n)) for i in range(n)}) if n else []
    trajectory: list[dict[str, Any]] = []

    def on_step(t: int, model: torch.nn.Module) -> None:
        if t in points and t != recipe.steps:
            trajectory.append({"step": t, **scorer.harm_now(model)})

    t0 = time.perf_counter()
    with PeakMemory(device) as mem:
        model = recipe.train(
            ctx.aligned, ctx.tokenizer, seed=seed, strategies=strategies, on_step=on_step
        )
    seconds = (
        time.perf_counter() - t0
    )  # the trajectory's scoring included (the same points in every run)
    row = {
        "defense": name,
        "control": control,
        "seed": seed,
        "seconds": seconds,
        "peak_mb": mem.peak_mb,
        **scorer.score(model, v=v, r=r, weight_fraction=weights),
    }
    trajectory.append(
        {
            "step": recipe.steps,
            **{k: row[k] for k in ("harm_k", "harm_n", "harm_rate", "harm_score")},
        }
    )
    row["trajectory"] = trajectory
    return row


@no_type_check  # validates its own arguments (typed errors)
def compare_defenses(
    history: Any,
    recipe: FinetuneRecipe,
    sets: EvalSets,
    *,
    config: CompareConfig | None = None,
    out: Any = None,
    device: Any = None,
    progress: bool = True,
    **settings: Any,
) -> DefenseComparison:
    """Run every defense beside its random control and the undefended run (module docstring).

    Args:
        history: a :class:`~revlens.History` or anything ``History.load`` accepts (base a full
            ``save_pretrained`` dir; aligned one too, or a PEFT adapter on the base, merged once into a
            content-keyed cache; runs are not needed).
        recipe: the fine-tuning recipe (a :class:`FinetuneRecipe` or subclass).
        sets: the prompts and metrics (:class:`EvalSets`; plain strings are rendered through the chat
            template where the tokenizer has one, :mod:`revlens.defenses.chatprep`).
        config: a :class:`CompareConfig`; ``**settings`` override it (``defenses=``, ``seeds=``...).
        out: a directory for the per-run results (resumable); ``None``: nothing written.
        device: where to train (default CPU).

    Returns:
        a :class:`DefenseComparison` (``table``, ``summary()``, ``figure()``, ``printed()``).

    Raises:
        ConfigError: a bad setting or argument, Lisa without ``sets.alignment`` (before any training).
        CheckpointError: base or aligned is not on disk (a ``save_pretrained`` or adapter dir).
    """
    from revlens.history import History

    cfg = CompareConfig.build(config, "compare_defenses", **settings)
    if not isinstance(recipe, FinetuneRecipe):
        raise ConfigError(f"recipe must be a FinetuneRecipe, got {type(recipe).__name__}")
    if not isinstance(sets, EvalSets):
        raise ConfigError(f"sets must be an EvalSets, got {type(sets).__name__}")
    if type(recipe).batches is FinetuneRecipe.batches and recipe.data is None:
        raise ConfigError(
            "recipe: data= is required (a JSONL file of {prompt, answer} records or a list of pairs)"
        )
    if "lisa" in cfg.defenses and sets.alignment is None:
        raise ConfigError(
            "defense 'lisa' needs alignment data: EvalSets(alignment=...) (prompt, answer) pairs"
        )
    hist = History.load(history)
    tokenizer = hist.tokenizer()
    sets = render_sets(sets, tokenizer)
    base_dir, base = _load(hist.base[0], "base", tokenizer)
    aligned_dir, aligned = _load(hist.aligned, "aligned", tokenizer)
    root = None if out is None else check_writable_dir(out, create=True)
    scorer = Scorer(sets, tokenizer, aligned, metadata=hist.metadata)
    v = Directions.from_tensor(
        scorer.means(base) - scorer.mu_aligned, scorer.layers, method="mean_diff"
    )
    alignment = None if sets.alignment is None else read_pairs(sets.alignment, "alignment")
    ctx = Context(
        base_dir,
        aligned_dir,
        aligned,
        tokenizer,
        sets.probes,
        v,
        _subspace(scorer, base, aligned, v, cfg.subspace_k),
        _refusal(aligned, sets, scorer.layers),
        _safety(aligned, tokenizer, sets),
        int(aligned.config.num_hidden_layers),
        recipe,
        alignment,
        recipe.lora_rank > 0,
    )
    del base
    runs = [("none", False)] + [
        (n, c) for n in cfg.defenses for c in ((False,) if cfg.skip_controls else (False, True))
    ]
    for name, control in runs[1:]:  # every defense's settings checked before any training
        build_defense(name, ctx, cfg, control=control, seed=cfg.seeds[0])
    weights = _weight_fraction(base_dir, aligned_dir)
    ident = {
        "format": FORMAT,
        "base": hist.base[0].model_fingerprint(),
        "aligned": hist.aligned.model_fingerprint(),
        "recipe": recipe.key(),
        "sets": sets.fingerprint(),
        "trajectory_points": cfg.trajectory_points,
        "control_seed": cfg.control_seed,
        "device": str(device or "cpu"),
    }
    if root is None or not any(root.glob("runs/*/*.json")):
        recipe.replace(steps=1).train(
            aligned, tokenizer, seed=cfg.seeds[0]
        )  # warm-up: one-time costs
    rows = []
    jobs = [(s, n, c) for s in cfg.seeds for n, c in runs]
    for seed, name, control in tqdm(jobs, desc="compare_defenses", disable=not progress):
        key = _key(
            {
                **ident,
                "defense": name,
                "control": control,
                "seed": seed,
                "settings": cfg.settings(name),
            }
        )
        path = (
            None
            if root is None
            else root / "runs" / (name + ("-control" if control else "")) / f"seed{seed}-{key}.json"
        )
        if path is not None and path.is_file():
            rows.append(read_json(path, "defense run"))
            continue
        row = _run(ctx, scorer, cfg, name, control, seed, v, ctx.r, weights, device)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, {**row, "key": key})
        rows.append(row)
    meta = {
        "config": cfg.to_dict(),
        "recipe": {k: x for k, x in recipe.to_dict().items() if k != "data"},
        "recipe_class": type(recipe).__qualname__,
        "harm_metric": scorer.harm_source,
        "safety_layers": None if ctx.safety is None else list(ctx.safety),
        "layers": scorer.layers,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    return DefenseComparison.from_rows(rows, meta)
