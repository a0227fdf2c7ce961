"""Statistics of models held in memory (a training loop's base and aligned modules), through the
same statistics loop as :func:`~revlens.collect.collect` (:func:`~revlens.collect.collector.accumulate`)
— for code that has the models but no history on disk, such as the reversion lab.

Example::

    stats = collect_models({"base": base, "aligned": aligned}, probes, tokenizer=tok, layers=[1, 2])
    v = MeanDiff().fit(stats).direction_
"""

from collections.abc import Mapping, Sequence

import torch

from revlens._types import TokenizerInput
from revlens.collect.checkpoint import CheckpointStats
from revlens.collect.collector import accumulate
from revlens.collect.stats import HistoryStats
from revlens.errors import ConfigError
from revlens.modes import SITE_KINDS, SiteKind, check_mode
from revlens.probes import Probes
from revlens.sites import access

__all__ = ["collect_model", "collect_models"]


def collect_model(
    model: torch.nn.Module,
    probes: Probes,
    *,
    tokenizer: TokenizerInput,
    layers: Sequence[int],
    site: SiteKind = "resid_post",
    name: str = "model",
    n_bootstrap: int = 0,
    bootstrap_seed: int = 0,
    batch_size: int | None = None,
    second: bool = False,
    keep: bool = False,
) -> CheckpointStats:
    """Statistics of the weights ``model`` (a plain Hugging Face model or a bridge) holds now, on
    ``probes`` tokenized by ``tokenizer``, at ``layers`` of ``site``: float64 means (``.mean``
    ``[layer, d]``), with ``second`` moments and per-prompt references (``keep``) on request.
    ``batch_size``: prompts per forward (default: all in one); the padding is masked."""
    check_mode("site", site, SITE_KINDS)
    tokenized = probes.tokenize(tokenizer)
    sites = access(model).sites(list(layers), site)
    embed = model.get_input_embeddings().weight  # [vocab, d_model]
    return accumulate(
        model,
        tokenized,
        sites,
        label=name,
        d_model=int(embed.shape[-1]),
        dtype=embed.dtype,
        n_bootstrap=n_bootstrap,
        bootstrap_seed=bootstrap_seed,
        batch_size=batch_size or len(tokenized),
        second=second,
        keep=keep,
        memory_budget=None,
        mask=True,
    )


def collect_models(
    models: Mapping[str, torch.nn.Module],
    probes: Probes,
    *,
    tokenizer: TokenizerInput,
    layers: Sequence[int],
    site: SiteKind = "resid_post",
    n_bootstrap: int = 0,
    bootstrap_seed: int = 0,
    batch_size: int | None = None,
    second: bool = True,
    keep: bool = True,
) -> HistoryStats:
    """:class:`HistoryStats` of a base and an aligned model held in memory (``{"base": ...,
    "aligned": ...}``), as :func:`~revlens.collect.collect` gives them for a history of just these
    two — what the direction estimators fit on (second moments and per-prompt references kept by
    default, for the paired-PCA and whitened directions).

    Raises:
        ConfigError: ``models`` is not exactly a base and an aligned model.
    """
    if set(models) != {"base", "aligned"}:
        raise ConfigError(
            f"collect_models needs exactly {{'base': ..., 'aligned': ...}}; got {sorted(models)}"
        )
    cks = {
        name: collect_model(
            models[name],
            probes,
            tokenizer=tokenizer,
            layers=layers,
            site=site,
            name=name,
            n_bootstrap=n_bootstrap,
            bootstrap_seed=bootstrap_seed,
            batch_size=batch_size,
            second=second,
            keep=keep,
        )
        for name in ("base", "aligned")
    }
    d_model = int(cks["aligned"].mean.shape[-1])
    tokenized = probes.tokenize(tokenizer)
    return HistoryStats(
        layers=list(layers),
        site=site,
        position=tokenized.position,
        d_model=d_model,
        checkpoints=cks,
        roles={"base": ("base", None, None), "aligned": ("aligned", None, 0)},
        run_starts={},
        meta={
            "n_prompts": len(tokenized),
            "n_bootstrap": int(n_bootstrap),
            "bootstrap_seed": int(bootstrap_seed),
            "probe_fingerprint": tokenized.fingerprint(),
        },
    )
