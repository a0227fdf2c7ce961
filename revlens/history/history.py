"""A model's training history: base → aligned → fine-tuning runs, as one object.

Roles (DESIGN §2): ``base`` (one or more pre-alignment checkpoints, the witness of the dominant
manifold), ``aligned`` (the anchor, fine-tuning step 0) and **runs** of fine-tuning steps
``t = 1..T``. Every run has a ``kind``: ``"run"`` (an ordinary fine-tune from aligned),
``"control"`` (drift measured from a base model, e.g. the same fine-tune started from base), or
any label a loader gives (the lab writes ``"blocked"`` runs). A history may also carry a
per-checkpoint **metrics table** (evaluation results: harm, task accuracy...) and metadata
(default probes, named metric specs); reports show them beside the drift, whoever wrote them.

Example:
    >>> h = History.from_dirs(base="ckpt/base", aligned="ckpt/aligned",
    ...                       runs={"seed0": {1: "ckpt/s0/1", 5: "ckpt/s0/5"}})  # doctest: +SKIP
    >>> h                                                                            # doctest: +SKIP
    History(4 checkpoints: base ×1, aligned, runs seed0 [1, 5])
"""

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, no_type_check

import pandas as pd
import torch

from revlens._types import Device, PathLike, TokenizerInput
from revlens.errors import CheckpointError, HistoryError, ShapeMismatchError
from revlens.history.checkpoint import BaseInput, Checkpoint, CheckpointSource, HubRef

__all__ = ["History", "MetricsInput", "Run"]

MetricsInput: TypeAlias = pd.DataFrame | PathLike | Sequence[Mapping[str, Any]]
"""A history's metrics table: a DataFrame, a list of records, or a ``.json`` / ``.csv`` file; each
row names its ``checkpoint``."""

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


@dataclass
class Run:
    """A fine-tuning run: steps ``t >= 1`` and the checkpoint its drift is measured from.

    Attributes:
        name: run name (e.g. a seed).
        steps: step -> checkpoint, sorted by step.
        start: name of the checkpoint the run started from (``"aligned"``, or a base for controls).
        kind: ``"run"``, ``"control"`` or a loader's label (e.g. ``"blocked"``).
        info: free-form details a loader recorded (e.g. the blocking settings).
    """

    name: str
    steps: dict[int, Checkpoint]
    start: str = "aligned"
    kind: str = "run"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def control(self) -> bool:
        """Whether this is a control run (drift measured from a base model)."""
        return self.kind == "control"

    def __repr__(self) -> str:
        s = list(self.steps)
        shown = s if len(s) <= 6 else [*s[:3], "…", *s[-2:]]
        kind = "" if self.kind == "run" else f", kind={self.kind!r}"
        return f"Run({self.name!r}, steps={shown}, start={self.start!r}{kind})"


class History:
    """Named checkpoints of one architecture with roles base / aligned / runs.

    Iteration order is defined: bases (in the order given), aligned, then runs in the order given,
    each by increasing step. ``len(history)`` counts checkpoints. Construct with the loaders
    (:meth:`from_dirs`, :meth:`from_trainer_output`, :meth:`from_state_dicts`, :meth:`from_hub`,
    :meth:`load`); they validate sources and shapes before anything expensive runs.

    Attributes:
        base, aligned, runs: the checkpoints.
        architecture: a ``save_pretrained`` dir with ``config.json`` (and usually the tokenizer).
        metrics: per-checkpoint evaluation table (``checkpoint, role, run, step, <metric>...``)
            or ``None``.
        metadata: free-form (``probes``: a default probe file; ``metrics_spec``: named metric
            specs; ``harm_metric``: the metrics column that is the harm rate; ``source``...).
    """

    def __init__(
        self,
        *,
        base: list[Checkpoint],
        aligned: Checkpoint,
        runs: Mapping[str, Run],
        architecture: PathLike | None = None,
        tokenizer: TokenizerInput | None = None,
        metadata: Mapping[str, Any] | None = None,
        metrics: MetricsInput | None = None,
    ) -> None:
        if not base:
            raise HistoryError(
                "a history needs at least one base checkpoint (the pre-alignment witness)"
            )
        if aligned is None:
            raise HistoryError("a history needs an aligned checkpoint (fine-tuning step 0)")
        self.base = list(base)
        self.aligned = aligned
        self.runs: dict[str, Run] = dict(runs)
        self.architecture = architecture
        self._tokenizer = tokenizer
        self.metadata: dict[str, Any] = dict(metadata or {})
        names = [c.name for c in self]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise HistoryError(f"checkpoint names must be unique; duplicated: {dup}")
        valid_starts = {c.name for c in [*self.base, self.aligned]}
        for run in self.runs.values():
            if run.start not in valid_starts:
                raise HistoryError(
                    f"run {run.name!r} starts from {run.start!r}; expected one of {sorted(valid_starts)}"
                )
        self._validate_signatures()
        self.metrics = self._check_metrics(metrics)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dirs(
        cls,
        *,
        base: BaseInput,
        aligned: CheckpointSource,
        runs: Mapping[str, Mapping[Any, Any]] | None = None,
        controls: Mapping[str, Mapping[Any, Any]] | None = None,
        tokenizer: TokenizerInput | None = None,
    ) -> "History":
        """From ``save_pretrained`` dirs (see :func:`revlens.history.loaders.from_dirs`)."""
        from revlens.history import loaders

        return loaders.from_dirs(
            base=base, aligned=aligned, runs=runs, controls=controls, tokenizer=tokenizer
        )

    @classmethod
    def from_trainer_output(
        cls,
        *,
        base: BaseInput,
        aligned: CheckpointSource,
        runs: Mapping[str, Any],
        controls: Mapping[str, Any] | None = None,
        tokenizer: TokenizerInput | None = None,
    ) -> "History":
        """From Hugging Face ``Trainer`` output dirs: every ``checkpoint-N`` folder is step N."""
        from revlens.history import loaders

        return loaders.from_trainer_output(
            base=base, aligned=aligned, runs=runs, controls=controls, tokenizer=tokenizer
        )

    @classmethod
    def from_state_dicts(
        cls,
        architecture_dir: PathLike,
        *,
        base: BaseInput,
        aligned: CheckpointSource,
        runs: Mapping[str, Mapping[Any, Any]] | None = None,
        controls: Mapping[str, Mapping[Any, Any]] | None = None,
        tokenizer: TokenizerInput | None = None,
    ) -> "History":
        """From weight files or in-memory state dicts on the architecture of ``architecture_dir``."""
        from revlens.history import loaders

        return loaders.from_state_dicts(
            architecture_dir,
            base=base,
            aligned=aligned,
            runs=runs,
            controls=controls,
            tokenizer=tokenizer,
        )

    @classmethod
    def from_hub(
        cls,
        repo_id: str,
        *,
        base_revision: str | Sequence[str],
        aligned_revision: str,
        runs: Mapping[str, Mapping[Any, str]] | None = None,
        aligned_repo: str | None = None,
        cache_dir: str | None = None,
    ) -> "History":
        """From hub revisions, e.g. Pythia's ``stepN`` branches (see :mod:`revlens.history.loaders`)."""
        from revlens.history import loaders

        return loaders.from_hub(
            repo_id,
            base_revision=base_revision,
            aligned_revision=aligned_revision,
            runs=runs,
            aligned_repo=aligned_repo,
            cache_dir=cache_dir,
        )

    @classmethod
    @no_type_check  # validates its own argument (typed errors), also under the test type-checker
    def load(
        cls, spec: "History | PathLike | Mapping[str, Any]", *, name: str | None = None
    ) -> "History":
        """Whatever a loader accepts: a ``History``; a ``history.json`` file or a dir holding one
        (e.g. a lab dir); a set of histories (``histories.json``; ``name`` picks one, default the
        first); a dir with ``base/``, ``aligned/`` and run sub-dirs of ``step-N`` /
        ``checkpoint-N`` folders; or a mapping with keys ``base``, ``aligned``, ``runs``
        (``controls``)."""
        from revlens.history import loaders

        return loaders.load(spec, name=name)

    @classmethod
    def from_lab(cls, directory: PathLike, *, pair: str | None = None) -> "History":
        """Deprecated alias of :meth:`load` (a lab dir holds a ``history.json``)."""
        import warnings

        warnings.warn(
            "History.from_lab is deprecated; use History.load(dir)",
            DeprecationWarning,
            stacklevel=2,
        )
        return cls.load(directory, name=pair)

    # ------------------------------------------------------------------ access
    def __iter__(self) -> Iterator[Checkpoint]:
        yield from self.base
        yield self.aligned
        for run in self.runs.values():
            yield from run.steps.values()

    def __len__(self) -> int:
        return len(self.base) + 1 + sum(len(r.steps) for r in self.runs.values())

    def __getitem__(self, name: str) -> Checkpoint:
        for ck in self:
            if ck.name == name:
                return ck
        raise KeyError(f"no checkpoint {name!r}; names: {[c.name for c in self]}")

    def run_kinds(self) -> dict[str, str]:
        """run name -> kind (``"run"``, ``"control"``, ``"blocked"``...)."""
        return {r.name: r.kind for r in self.runs.values()}

    def restricted(self, runs: Iterable[str] = ()) -> "History":
        """The same history with only the named runs (by default none: base and aligned only)."""
        keep = {n: r for n, r in self.runs.items() if n in set(runs)}
        return History(
            base=self.base,
            aligned=self.aligned,
            runs=keep,
            architecture=self.architecture,
            tokenizer=self._tokenizer,
            metadata=self.metadata,
            metrics=None,
        )

    def __repr__(self) -> str:
        parts = [
            f"base ×{len(self.base)}",
            "aligned" + (" (adapter)" if self._is_adapter(self.aligned) else ""),
        ]
        for run in self.runs.values():
            steps = list(run.steps)
            shown = f"{steps}" if len(steps) <= 5 else f"[{steps[0]}..{steps[-1]}] ×{len(steps)}"
            adapters = sum(self._is_adapter(c) for c in run.steps.values())
            tag = (
                ""
                if not adapters
                else (" (adapters)" if adapters == len(steps) else f" ({adapters} adapters)")
            )
            parts.append(f"{'' if run.kind == 'run' else run.kind + ' '}{run.name} {shown}{tag}")
        return f"History({len(self)} checkpoints: {', '.join(parts)})"

    @staticmethod
    def _is_adapter(ck: Checkpoint) -> bool:
        return not isinstance(ck.source, HubRef) and ck.kind == "adapter"

    # ------------------------------------------------------------------ architecture
    def architecture_dir(self) -> Path:
        """The dir holding ``config.json`` of this history's architecture."""
        arch = self.architecture
        if arch is None:
            p = self.aligned.local_path()
            arch = p if p is not None and p.is_dir() else None
        if arch is None or not (Path(arch) / "config.json").is_file():
            raise CheckpointError(
                "no architecture dir (config.json) in this history; use from_state_dicts"
            )
        return Path(arch)

    def config_fingerprint(self) -> str:
        """Content hash of the architecture's ``config.json`` (part of every cache key: a changed
        activation or norm epsilon changes the statistics even when the weights do not)."""
        from revlens.model import config_fingerprint

        return config_fingerprint(self.architecture_dir())

    def tokenizer(self) -> Any:
        """The history's tokenizer (given, or read from the architecture / aligned / base dirs)."""
        if self._tokenizer is not None and not isinstance(self._tokenizer, (str, os.PathLike)):
            return self._tokenizer
        from transformers import AutoTokenizer

        candidates = [self._tokenizer] if self._tokenizer is not None else []
        candidates += [
            self.architecture,
            self.aligned.local_path(),
            *(b.local_path() for b in self.base),
        ]
        for cand in candidates:
            if (
                cand is not None
                and Path(cand).is_dir()
                and any((Path(cand) / f).is_file() for f in _TOKENIZER_FILES)
            ):
                try:
                    self._tokenizer = AutoTokenizer.from_pretrained(str(cand))
                except (OSError, ValueError) as exc:
                    raise CheckpointError(f"cannot read the tokenizer in {cand}: {exc}") from None
                return self._tokenizer
        raise CheckpointError("no tokenizer found in the history's dirs; pass tokenizer=...")

    def boot(
        self,
        *,
        device: Device | None = None,
        dtype: torch.dtype = torch.float32,
        low_memory: bool = True,
    ) -> Any:
        """Boot one ``TransformerBridge`` on this history's architecture with the aligned weights
        streamed in (see :meth:`revlens.LensModel.boot`; an adapter aligned is applied on its base)."""
        from revlens.model import LensModel, config_fingerprint

        config_fingerprint(
            self.architecture_dir()
        )  # a broken config.json is named before anything reads it
        first = self.aligned if self.aligned.kind == "full" else self.aligned.require_start()
        lm = LensModel.boot(
            self.architecture_dir(),
            device=device,
            dtype=dtype,
            tokenizer=self.tokenizer(),
            weights=first.ref(),
            low_memory=low_memory,
        )
        lm.load(self.aligned)
        return lm

    def identity(self) -> str:
        """A content hash of the whole history (architecture config + every checkpoint's weights)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(self.config_fingerprint().encode())
        for ck in self:
            h.update(f"{ck.name}:{ck.model_fingerprint()}".encode())
        return h.hexdigest()

    def adapters(self) -> list[Checkpoint]:
        """The checkpoints that are PEFT adapters (applied on their start model when loaded)."""
        return [ck for ck in self if not isinstance(ck.source, HubRef) and ck.kind == "adapter"]

    # ------------------------------------------------------------------ validation
    def _validate_signatures(self) -> None:
        ref: dict[str, tuple[int, ...]] | None = None
        ref_name = ""
        for ck in self:
            if isinstance(ck.source, HubRef):
                continue  # validated when loaded (avoids a download at construction)
            if ck.kind == "adapter":
                ck.require_start()  # checked against the model's modules when it is booted
                continue
            sig = ck.signature()  # raw header keys: renames and ties are checked when swapped in
            if sig is None:
                continue
            if ref is None:
                ref, ref_name = sig, ck.name
                continue
            # Shapes of shared names only: writers drop opposite sides of tied weights; completeness
            # is checked, tie-aware, when the weights are loaded.
            for key in sorted(set(ref) & set(sig)):
                if sig[key] != ref[key]:
                    raise ShapeMismatchError(
                        f"parameter {key!r} has shape {ref[key]} in {ref_name} but {sig[key]} in {ck.name}"
                    )

    def _check_metrics(self, metrics: Any) -> Any:
        if metrics is None:
            return None
        from revlens.history.spec import metrics_frame

        return metrics_frame(self, metrics)
