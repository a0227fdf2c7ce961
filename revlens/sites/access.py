"""One way to reach the sites of a model: register hooks, read activations, stop early.

:func:`access` wraps what a user holds — a :class:`~revlens.model.LensModel`, a TransformerLens
``TransformerBridge``, or a plain Hugging Face causal LM (the model a ``Trainer`` fine-tunes,
which must not be rewritten by a bridge) — in a :class:`SiteAccess`. Collect, causal
interventions, blocking and monitoring all read and edit the stream through it, with the layer
convention of :mod:`revlens.sites.names`.

- :meth:`SiteAccess.hooked` registers ``fn(h) -> h' | None`` at sites for the duration of a
  ``with`` block; the hooks are removed on exit, also when the block raises.
- :meth:`SiteAccess.read` runs one forward and returns the position-weighted activation
  ``[batch, d]`` at each site, stopping the forward right after the deepest one (the unembedding
  and every later block are skipped). Differentiable when grad mode is on.
- Activations are always handed to ``fn`` as ``[batch, pos, d]`` (a family whose hook sees a
  flattened ``[batch·pos, d]`` tensor is reshaped and restored).
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, no_type_check

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from revlens._types import ModuleLike
from revlens.errors import NonFiniteError, RevlensError, SiteError
from revlens.modes import SiteKind
from revlens.sites.cached import ActiveEdit, for_decoding, recorded
from revlens.sites.names import LayerSpec, Site, hook_name, resolve_sites

__all__ = ["Edit", "SiteAccess", "access"]

Edit = Callable[[Tensor], Tensor | None]


class StopForward(Exception):
    """Raised by the deepest read hook to skip the rest of the forward pass."""


class SiteAccess:
    """Sites of one model (base class; see :func:`access`).

    Attributes:
        module: the ``nn.Module`` whose forward runs (its parameters, train/eval state).
        n_layers, d_model, n_ctx, vocab_size: the architecture (``n_ctx`` 0 if unknown).
    """

    module: nn.Module
    n_layers: int
    d_model: int
    n_ctx: int
    vocab_size: int

    def __init__(self) -> None:
        self._batch_shape: tuple[int, int] | None = None

    # ------------------------------------------------------------------ to implement
    def sites(self, layers: LayerSpec = "all", kind: SiteKind = "resid_post") -> list[Site]:
        """Validated sites of ``kind`` at ``layers``."""
        raise NotImplementedError

    def _register(self, site: Site, fn: Edit) -> Any:
        """Register ``fn`` on the site's activation; returns a removable handle."""
        raise NotImplementedError

    def _run(self, tokens: Tensor, mask: Tensor | None, position_ids: Tensor | None = None) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    @property
    def device(self) -> torch.device:
        """Device of the model's first parameter."""
        return next(self.module.parameters()).device

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        mask: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
    ) -> Any:
        """The model's forward on right-padded ``tokens``; returns the logits ``[batch, pos, vocab]``.

        ``position_ids`` (with ``mask``): an extended forward whose rows have holes (see
        :mod:`revlens.sites.layout`); the attention mask and positions are then passed to the model.
        """
        self._batch_shape = (int(tokens.shape[0]), int(tokens.shape[1]))
        dev = self.device
        try:
            return self._run(
                tokens.to(dev),
                None if mask is None else mask.to(dev),
                None if position_ids is None else position_ids.to(dev),
            )
        finally:
            self._batch_shape = None

    def _shaped(self, fn: Edit) -> Edit:
        """``fn`` seeing ``[batch, pos, d]`` even where a family's hook sees ``[batch·pos, d]``
        (also when the batch has grown mid-forward, see :meth:`growing_batch`)."""

        def wrapped(h: Tensor) -> Tensor | None:
            shape = self._batch_shape
            if h.ndim == 2 and shape is not None and shape[1] > 0 and h.shape[0] % shape[1] == 0:
                new = fn(h.view(h.shape[0] // shape[1], shape[1], h.shape[-1]))
                return None if new is None else new.reshape(h.shape)
            return fn(h)

        return wrapped

    def _register_site(self, site: Site, fn: Edit) -> list[Any]:
        """Handles of the hooks that show ``fn`` the site's activation and apply its edit.

        ``resid_mid`` is the stream between attention and MLP: ``resid_pre + attn_out``. Hook
        points on the MLP's input (TransformerLens' ``hook_resid_mid`` is the second norm's input)
        would change only what the MLP reads, not the stream that the block adds the MLP's
        output to; so an edit of ``resid_mid`` is applied to what the attention adds.
        """
        if site.kind != "resid_mid":
            return [self._register(site, self._shaped(fn))]
        entry = Site(site.layer, "resid_pre", hook_name("resid_pre", site.layer))
        added = Site(site.layer, "attn_out", hook_name("attn_out", site.layer))
        seen: list[Tensor] = []

        def keep(h: Tensor) -> None:
            seen[:] = [h]

        def edit(a: Tensor) -> Tensor | None:
            pre = seen[0]
            new = fn(pre + a)
            return None if new is None else new - pre

        return [
            self._register(entry, self._shaped(keep)),
            self._register(added, self._shaped(edit)),
        ]

    @contextmanager
    def hooked(self, edits: Mapping[Site, Edit] | Sequence[tuple[Site, Edit]]) -> Iterator[None]:
        """Register ``edits`` (site -> ``fn(h) -> h' | None``) while the block runs.

        Each edit is recorded as active (:func:`revlens.sites.cached.active_edits`) and wrapped by
        :func:`revlens.sites.cached.for_decoding` (no change outside a KV-cached decoding step)."""
        items = list(edits.items()) if isinstance(edits, Mapping) else list(edits)
        # resid_mid hooks sit on the attention's output hook (see _register_site): registered after
        # the others, they see an attn_out edit of the same block first, as the forward does
        items.sort(key=lambda item: item[0].kind == "resid_mid")
        handles: list[Any] = []
        entries = []  # recorded for the KV-cached generation path (revlens.sites.cached)
        try:
            for site, fn in items:
                mine = self._register_site(site, for_decoding(fn))
                handles += mine
                entries.append(ActiveEdit(self.module, site, fn, tuple(h.id for h in mine)))
            with recorded(entries):
                yield
        finally:
            for h in handles:
                h.remove()

    def read(
        self,
        tokens: Int[Tensor, "batch pos"],
        weights: Float[Tensor, "batch *n pos"],
        sites: Sequence[Site],
        *,
        mask: Tensor | None = None,
        stop: bool = True,
        check_finite: str | None = None,
    ) -> list[Float[Tensor, "batch *n d_model"]]:
        """Position-weighted activations ``[batch, d]`` at ``sites`` from one forward.

        ``weights`` ``[batch, pos]``, or ``[batch, n, pos]`` for ``n`` position weightings read in
        the same forward (then each site gives ``[batch, n, d]``).

        The model runs in eval mode (its train/eval state is restored); with ``stop`` the forward
        ends after the deepest site. One tensor per site, not stacked, so a backward from one
        site's tensor only runs through the blocks below it. ``check_finite`` (a checkpoint
        name) raises :class:`~revlens.errors.NonFiniteError` on NaN / inf activations.
        """
        if not sites:
            raise SiteError("no site to read")
        store: dict[Site, Tensor] = {}
        deepest = max(sites, key=lambda s: s.order)
        w = weights.to(self.device)
        rule = (
            "bp,bpd->bd" if w.ndim == 2 else "bnp,bpd->bnd"
        )  # several position weightings at once

        def make(site: Site) -> Edit:
            def read_one(h: Tensor) -> None:
                reduced = torch.einsum(rule, w.to(h.dtype), h)
                if check_finite is not None and not bool(torch.isfinite(reduced).all()):
                    raise NonFiniteError(
                        f"checkpoint {check_finite}: activations at layer {site.layer} "
                        f"({site.hook_name}) hold NaN or inf"
                    )
                store[site] = reduced
                if stop and site == deepest:
                    raise StopForward

            return read_one

        # switch modes only when some module is training: a bridge's eval()/train() walks every
        # hook point and was 11 % of collect when done on every batch (a scan is ~10x cheaper)
        was_training = self._any_training()
        try:
            if was_training:
                self.module.eval()
            with self.hooked([(s, make(s)) for s in sites]), suppress(StopForward):
                self.forward(tokens, mask)
        finally:
            if was_training:
                self.module.train(True)
        missing = [s.hook_name for s in sites if s not in store]
        if missing:
            raise RevlensError(f"hooks at {missing} never fired during the forward pass")
        return [store[s] for s in sites]

    def _any_training(self) -> bool:
        roots = [self.module, getattr(self.module, "original_model", None)]
        return any(m.training for r in roots if isinstance(r, nn.Module) for m in r.modules())

    def capture(
        self, tokens: Int[Tensor, "batch pos"], sites: Sequence[Site]
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """One full forward: the logits and the activations ``[batch, pos, d]`` at ``sites``
        (keyed by layer)."""
        acts: dict[int, Tensor] = {}

        def make(site: Site) -> Edit:
            def keep(h: Tensor) -> None:
                acts[site.layer] = h.detach().clone()

            return keep

        with self.hooked([(s, make(s)) for s in sites]):
            out = self.forward(tokens)
        return out, acts

    def _expansion_modules(self) -> list[nn.Module]:
        """Modules whose batch-shaped arguments must follow a batch grown mid-forward."""
        raise NotImplementedError

    @contextmanager
    def growing_batch(self, b: int) -> Iterator[None]:
        """While the block runs, a batch that grows from ``b`` rows mid-forward (intervened copies
        appended at a site) carries its other batch-shaped arguments along.

        Forward pre-hooks on the blocks and their attention modules remember the tensors they
        receive while the stream still has ``b`` rows (attention mask, rotary embeddings, ALiBi
        biases: computed once by the model for the original batch); when one of **those** tensors,
        or one with exactly ``b`` rows, reaches a module together with a grown stream, it is
        repeated to the grown batch (``[b·k, ...]`` rows, e.g. ALiBi's batch × heads, become
        ``[n·k, ...]``; one repetition per size, shared by the blocks). Positional and keyword
        arguments alike; other tensors computed inside the grown forward are left alone.
        """
        originals: dict[int, Tensor] = {}  # id -> a tensor the model computed for the b-row batch
        grown: dict[tuple[int, int], Tensor] = {}  # (id of original, rows) -> its repetition
        source: dict[int, Tensor] = {}  # id of a repetition -> its original

        def remember(x: Any) -> None:
            if isinstance(x, (tuple, list)):
                for y in x:
                    remember(y)
            elif isinstance(x, Tensor) and x.ndim >= 2 and x.shape[0] % b == 0:
                originals[id(x)] = x

        def expand(x: Any, n: int) -> Any:
            if isinstance(x, (tuple, list)):
                return type(x)(expand(y, n) for y in x)
            if not isinstance(x, Tensor):
                return x
            orig = originals.get(id(x))
            orig = orig if orig is x else source.get(id(x))  # a repetition made for an earlier size
            if orig is None and x.ndim >= 2 and x.shape[0] == b:
                orig = originals[id(x)] = (
                    x  # first seen with the grown stream (e.g. a per-layer-type mask)
                )
            if orig is None:
                return x
            k = orig.shape[0] // b
            if x.shape[0] == n * k:
                return x
            key = (id(orig), n)
            if key not in grown:
                rows = orig.reshape(b, k, *orig.shape[1:]).repeat(n // b, *([1] * orig.ndim))
                grown[key] = rows.reshape(n * k, *orig.shape[1:])
                source[id(grown[key])] = orig
            return grown[key]

        def pre_hook(module: Any, args: tuple, kwargs: dict) -> Any:
            main = args[0] if args else kwargs.get("hidden_states")
            if not isinstance(main, Tensor):
                return None
            rest = [*args[1:], *(v for k, v in kwargs.items() if k != "hidden_states")]
            if main.shape[0] == b:
                remember(rest)
                return None
            n = main.shape[0]
            return (*args[:1], *(expand(a, n) for a in args[1:])), {
                k: v if k == "hidden_states" else expand(v, n) for k, v in kwargs.items()
            }

        handles = []
        try:
            for mod in self._expansion_modules():
                handles.append(mod.register_forward_pre_hook(pre_hook, with_kwargs=True))
            yield
        finally:
            for h in handles:
                h.remove()

    def parameters(self) -> list[nn.Parameter]:
        """The model's trainable parameters (unique, in module order)."""
        seen: set[int] = set()
        out = []
        for p in self.module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out


class BridgeAccess(SiteAccess):
    """Sites of a TransformerLens ``TransformerBridge``, through its hook points."""

    def __init__(self, bridge: Any) -> None:
        super().__init__()
        self.bridge = bridge
        self.module = bridge
        cfg = bridge.cfg
        self.n_layers, self.d_model = int(cfg.n_layers), int(cfg.d_model)
        self.n_ctx, self.vocab_size = int(getattr(cfg, "n_ctx", 0) or 0), int(cfg.d_vocab)

    @no_type_check  # validates its own arguments
    def sites(self, layers: LayerSpec = "all", kind: SiteKind = "resid_post") -> list[Site]:
        """Validated sites, checked against the bridge's hook registry."""
        return resolve_sites(self.bridge, layers, kind)

    def _register(self, site: Site, fn: Edit) -> Any:
        try:
            point = self.bridge.hook_dict[site.hook_name]
        except KeyError:
            raise SiteError(f"hook {site.hook_name!r} is not on this model") from None

        def hook(module: Any, args: Any, output: Any) -> Any:
            return fn(output)

        return point.register_forward_hook(hook)

    def _expansion_modules(self) -> list[nn.Module]:
        out: list[nn.Module] = []
        for block in getattr(self.bridge, "blocks", []):
            out.append(block)
            out += [child for name, child in block.named_children() if "attn" in name]
        return out

    def _run(self, tokens: Tensor, mask: Tensor | None, position_ids: Tensor | None = None) -> Any:
        if (
            position_ids is not None
        ):  # an extended forward (revlens.sites.layout): holes need the mask
            return self.bridge(tokens, attention_mask=mask, position_ids=position_ids)
        # right padding: with a causal model a real token never attends to padding
        return self.bridge(tokens)


@no_type_check  # validates its own argument (SiteError naming it)
def access(model: ModuleLike) -> SiteAccess:
    """A :class:`SiteAccess` for a ``LensModel``, a ``TransformerBridge`` or a Hugging Face
    causal LM (an existing ``SiteAccess`` is returned as is).

    Raises:
        SiteError: ``model`` is none of these, or its decoder blocks cannot be found.
    """
    if isinstance(model, SiteAccess):
        return model
    bridge = getattr(model, "bridge", None)
    if bridge is not None and hasattr(bridge, "hook_dict"):
        return BridgeAccess(bridge)
    if hasattr(model, "hook_dict") and hasattr(model, "cfg"):
        return BridgeAccess(model)
    from revlens.sites.hf import HFAccess

    return HFAccess(model)
