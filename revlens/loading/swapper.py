"""One booted model, many checkpoints: :class:`Swapper` swaps full checkpoints and LoRA adapters
in place and knows what the model holds.

Example:
    >>> sw = Swapper(bridge.original_model, bridge, boot=Ref("out/base", name="base"))  # doctest: +SKIP
    >>> sw.load("out/aligned", name="aligned")  # doctest: +SKIP
    Loaded('aligned', kind='full')
    >>> sw.load("out/run0/checkpoint-5", name="run0/5", start=Ref("out/aligned", name="aligned"))  # doctest: +SKIP
    Loaded('run0/5', kind='adapter', start='aligned')
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, no_type_check

import torch
from torch import Tensor

from revlens._types import WeightsSource
from revlens.errors import CheckpointError, ConfigError, RevlensError
from revlens.loading.adapt import apply_adapter
from revlens.loading.classify import CheckpointInfo, classify
from revlens.loading.gguf import GGUFFile
from revlens.loading.lora import read_adapter
from revlens.loading.plan import Plan, make_plan, name_resolver
from revlens.loading.sources import open_source
from revlens.loading.swap import execute
from revlens.loading.targets import Targets, refresh_bridge

__all__ = ["Loaded", "Ref", "Swapper"]


@dataclass(frozen=True)
class Ref:
    """A checkpoint source plus the caller's identity for it.

    Attributes:
        source: a dir, a weights file, an adapter dir, a state dict or a module.
        name: a display name (default: the path, or ``"<state dict>"``).
        fingerprint: the caller's content fingerprint (e.g. ``Checkpoint.fingerprint()``); loading
            a ref whose fingerprint equals what is loaded is a no-op.
        kind: ``"auto"``, ``"full"`` or ``"adapter"`` (see :func:`~revlens.loading.classify`).
    """

    source: WeightsSource | GGUFFile
    name: str | None = None
    fingerprint: str | None = None
    kind: str = "auto"

    @property
    def label(self) -> str:
        """The name, or a readable stand-in."""
        if self.name is not None:
            return self.name
        return str(self.source) if isinstance(self.source, (str, os.PathLike)) else "<state dict>"

    def same_weights(self, other: "Ref | None") -> bool:
        """Whether ``other`` certainly names the same weights (fingerprints, else path/identity)."""
        if other is None:
            return False
        if self.fingerprint is not None and other.fingerprint is not None:
            return self.fingerprint == other.fingerprint
        if isinstance(self.source, (str, os.PathLike)) and isinstance(
            other.source, (str, os.PathLike)
        ):
            return Path(self.source).resolve() == Path(other.source).resolve()
        return self.source is other.source and self.source is not None


@dataclass(frozen=True)
class Loaded:
    """What the model holds: a full checkpoint, or an adapter on top of one.

    Attributes:
        name: the checkpoint's name.
        kind: ``"full"`` or ``"adapter"``.
        fingerprint: the caller's fingerprint of it (``None`` if none was given).
        start: for an adapter, the full checkpoint under it.
    """

    name: str
    kind: Literal["full", "adapter"]
    fingerprint: str | None = None
    start: "Loaded | None" = None

    def __repr__(self) -> str:
        extra = f", start={self.start.name!r}" if self.start is not None else ""
        return f"Loaded({self.name!r}, kind={self.kind!r}{extra})"


def _as_ref(
    source: Any, name: str | None = None, fingerprint: str | None = None, kind: str = "auto"
) -> Ref:
    return source if isinstance(source, Ref) else Ref(source, name, fingerprint, kind)


def _same_fingerprint(a: Ref | None, b: Ref | None) -> bool:
    return (
        a is not None
        and b is not None
        and a.fingerprint is not None
        and a.fingerprint == b.fingerprint
    )


@dataclass
class _Applied:
    ref: Ref
    touched: set[str]
    originals: dict[str, Tensor] | None


class Swapper:
    """Swap checkpoints into one booted Hugging Face model (and its ``TransformerBridge``) in place.

    Full checkpoints are mapped with transformers' own loading rules (renames, prefix, expert
    fusion) and streamed tensor by tensor; the bridge's split copies of fused weights are then
    re-derived. A LoRA adapter is merged into the **start** model's weights module by module;
    before anything else is loaded, exactly the parameters it touched are restored (re-read from
    the start checkpoint, or from in-memory originals when the start cannot be re-read or
    ``keep_originals=True``).

    Args:
        model: the HF model (a bridge's ``original_model``, or a bare ``PreTrainedModel``).
        bridge: its ``TransformerBridge`` (``None`` for a bare HF model).
        boot: the checkpoint the model was booted from (a :class:`Ref` or a source), so it can
            serve as a start model without being re-read. ``None``: unknown boot weights.
        key_mapping: extra renames, as ``from_pretrained(key_mapping=...)``.
        keep_originals: keep the touched parameters' start values in memory (exact, no re-read)
            instead of re-reading them from the start checkpoint.

    Raises:
        ConfigError: the bridge's weights were processed (``process_weights``): raw checkpoint
            weights would not match them; or parameters are on the meta device (offloaded).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        bridge: torch.nn.Module | None = None,
        *,
        boot: Ref | WeightsSource | None = None,
        key_mapping: dict[str, str] | None = None,
        keep_originals: bool = False,
    ) -> None:
        if bridge is not None and getattr(bridge, "_weights_processed", False):
            raise ConfigError(
                "the bridge's weights are processed (fold_ln/centering): checkpoint weights cannot "
                "be swapped in; boot it without process_weights"
            )
        self.model = model
        self.bridge = bridge
        self.targets = Targets.from_model(model)
        meta = [n for n, p in self.targets.params.items() if p.is_meta]
        if meta:
            raise ConfigError(
                f"parameters {meta[:3]} are on the meta device (offloaded or not materialised): "
                "in-place copies into them would be lost; load the model without offloading"
            )
        self.key_mapping = key_mapping
        self.keep_originals = keep_originals
        self._full: Ref | None = _as_ref(boot) if boot is not None else None
        self._full_plan: Plan | None = None  # how to re-read the full weights (built on first need)
        self._full_restorable = boot is not None  # False after a partial (strict=False) load
        self._adapter: _Applied | None = None
        self._broken: str | None = None

    # ------------------------------------------------------------------ state
    @property
    def loaded(self) -> Loaded | None:
        """What the model holds now (``None``: unknown boot weights, or a failed load left a mix)."""
        if self._broken is not None or self._full is None:
            return None
        full = Loaded(self._full.label, "full", self._full.fingerprint)
        if self._adapter is None:
            return full
        return Loaded(self._adapter.ref.label, "adapter", self._adapter.ref.fingerprint, full)

    def signature(self) -> dict[str, tuple[int, ...]]:
        """HF parameter name -> shape, for every parameter a full checkpoint must provide."""
        return self.targets.signature()

    @no_type_check  # validates its own arguments (typed errors), also under the test type-checker
    def check(
        self, source: Ref | WeightsSource, *, kind: str = "auto", strict: bool = True
    ) -> CheckpointInfo:
        """Classify and validate ``source`` against the model, reading headers only (no writes).

        Raises:
            CheckpointError, ShapeMismatchError, ConfigError: as :meth:`load` would, before copying.
        """
        ref = _as_ref(source, kind=kind)
        info = classify(ref.source, ref.kind)
        if info.kind == "adapter":
            read_adapter(info.path, self.targets, self._resolver()).close()
        elif info.kind == "full":
            with open_source(ref.source, name=ref.label) as src:
                make_plan(
                    src, self.targets, self.model, key_mapping=self.key_mapping, strict=strict
                )
        return info

    # ------------------------------------------------------------------ loading
    @no_type_check  # validates its own arguments (typed errors), also under the test type-checker
    def load(
        self,
        source: Ref | WeightsSource,
        *,
        name: str | None = None,
        fingerprint: str | None = None,
        kind: str = "auto",
        start: Ref | WeightsSource | None = None,
        strict: bool = True,
    ) -> Loaded | None:
        """Put ``source`` in the model: a full checkpoint, or an adapter on its start model.

        Args:
            source: a dir (``save_pretrained``, adapter, ``checkpoint-N``), a weights file, a state
                dict, a module, or a :class:`Ref`.
            name, fingerprint, kind: see :class:`Ref` (ignored when ``source`` is a ``Ref``).
            start: for an adapter, its start model (a :class:`Ref` or a source); ``None`` means
                the full checkpoint loaded now. Ignored for full checkpoints.
            strict: a full checkpoint must provide every parameter.

        Returns:
            what the model holds now (:attr:`loaded`).

        Raises:
            CheckpointError: unreadable or missing files (before any copy).
            ShapeMismatchError: missing / unexpected / mis-shaped parameters (before any copy).
            NonFiniteError: NaN/inf weights. After a full checkpoint the previous state is restored
                (re-read; if it cannot be, :attr:`loaded` becomes ``None`` until a full load); after
                an adapter, its start model is restored.
            ConfigError: an unsupported adapter, or an adapter with no known start model.
        """
        ref = _as_ref(source, name, fingerprint, kind)
        info = classify(ref.source, ref.kind)
        if info.kind == "trainer_run":
            raise CheckpointError(
                f"{info.path} is a Trainer run (checkpoint-N folders {list(info.steps)}), "
                "not one checkpoint; load one of its checkpoint-N dirs"
            )
        if info.kind == "full":
            self._load_full(ref, strict=strict)
        else:
            self._load_adapter(ref, info, _as_ref(start) if start is not None else None)
        return self.loaded

    def reset(self) -> None:
        """Take the current adapter off: restore exactly the parameters it touched."""
        self._undo_adapter()

    def forget(self) -> None:
        """Stop assuming anything about the weights the model holds (they were changed outside the
        Swapper, e.g. by an optimizer step): :attr:`loaded` becomes ``None``, the next load reads
        everything, and nothing of a previous source is kept (an in-memory state dict is released).
        An adapter then needs an explicit ``start``."""
        self._full, self._full_plan, self._full_restorable = None, None, False
        self._adapter, self._broken = None, None

    def _resolver(self) -> Any:
        return name_resolver(self.model, self.targets, self.key_mapping)

    def _refresh(self) -> None:
        if self.bridge is not None:
            refresh_bridge(self.bridge)

    def _load_full(self, ref: Ref, *, strict: bool = True) -> None:
        if self._broken is None and _same_fingerprint(ref, self._full):
            self._undo_adapter()  # already loaded (under an adapter: take the adapter off)
            return
        with open_source(ref.source, name=ref.label) as src:
            plan = make_plan(
                src, self.targets, self.model, key_mapping=self.key_mapping, strict=strict
            )
            if self._adapter is not None and not self._adapter.touched <= plan.written():
                self._undo_adapter()  # a partial checkpoint must not leave adapter residue behind
            try:
                execute(plan, src, self.targets, self.model)
            except RevlensError as exc:
                self._recover(exc)
                raise
            finally:
                self._refresh()
        self._full, self._adapter, self._broken = ref, None, None
        self._full_plan, self._full_restorable = (plan, True) if strict else (None, False)

    def _restore_plan(self) -> Plan | None:
        """The plan that re-reads the full weights now loaded (``None`` if they cannot be re-read)."""
        if self._full_plan is None and self._full_restorable and self._full is not None:
            with open_source(self._full.source, name=self._full.label) as src:
                self._full_plan = make_plan(
                    src, self.targets, self.model, key_mapping=self.key_mapping
                )
        return self._full_plan

    def _load_adapter(self, ref: Ref, info: CheckpointInfo, start: Ref | None) -> None:
        if (self._broken is not None or self._full is None) and start is None:
            why = self._broken or "the boot weights are unknown"
            raise ConfigError(
                f"adapter {ref.label} needs a start model (recorded: {info.start_hint!r}) and "
                f"{why}: pass start=, or give the Swapper its boot checkpoint"
            )
        on_start = self._broken is None and (start is None or start.same_weights(self._full))
        if self._adapter is not None and on_start and _same_fingerprint(ref, self._adapter.ref):
            return  # this adapter on this start is loaded
        adapter = read_adapter(info.path, self.targets, self._resolver())
        try:
            self._undo_adapter()
            if not on_start:
                self._load_full(start)
            touched = adapter.touched(self.targets)
            keep = self.keep_originals or self._restore_plan() is None
            originals = {n: self.targets.get(n).detach().clone() for n in touched} if keep else None
            self._adapter = _Applied(ref, touched, originals)
            try:
                apply_adapter(adapter, self.targets)
            except RevlensError:
                self._undo_adapter()
                raise
            finally:
                self._refresh()
        finally:
            adapter.close()

    @torch.no_grad()
    def _undo_adapter(self) -> None:
        applied, self._adapter = self._adapter, None
        if applied is None:
            return
        try:
            if applied.originals is not None:
                for name, value in applied.originals.items():
                    self.targets.get(name).copy_(value)
            else:
                assert self._full is not None and self._full_plan is not None
                with open_source(self._full.source, name=self._full.label) as src:
                    execute(
                        self._full_plan.restricted(applied.touched, self.targets),
                        src,
                        self.targets,
                        self.model,
                    )
        except RevlensError as exc:
            self._broken = f"restoring the start model {self._full.label if self._full else '?'} failed ({exc})"
            raise
        finally:
            self._refresh()

    def _recover(self, exc: Exception) -> None:
        """After a failed full load: reload what was there before, or mark the model broken."""
        previous, adapter = self._full, self._adapter
        self._adapter = None
        try:
            plan = self._restore_plan()
            if previous is None or plan is None:
                self._broken = f"a failed load left the model a mix ({exc})"
                return
            with open_source(previous.source, name=previous.label) as src:
                execute(plan, src, self.targets, self.model)
            if adapter is not None:
                self._load_adapter(adapter.ref, classify(adapter.ref.source, "adapter"), None)
        except RevlensError as exc2:
            self._broken = f"a failed load left the model a mix, and restoring {previous.label} failed ({exc2})"

    def __repr__(self) -> str:
        return f"Swapper({type(self.model).__name__}, bridge={self.bridge is not None}, loaded={self.loaded!r})"
