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

from revlens.errors import NonFiniteError, RevlensError, SiteError
from revlens.sites.names import LayerSpec, Site, resolve_sites

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
    def sites(self, layers: LayerSpec = "all", kind: str = "resid_post") -> list[Site]:
        """Validated sites of ``kind`` at ``layers``."""
        raise NotImplementedError

    def _register(self, site: Site, fn: Edit) -> Any:
        """Register ``fn`` on the site's activation; returns a removable handle."""
        raise NotImplementedError

    def _run(self, tokens: Tensor, mask: Tensor | None) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    @property
    def device(self) -> torch.device:
        """Device of the model's first parameter."""
        return next(self.module.parameters()).device

    def forward(self, tokens: Int[Tensor, "batch pos"], mask: Tensor | None = None) -> Any:
        """The model's forward on right-padded ``tokens``; returns the logits ``[batch, pos, vocab]``."""
        self._batch_shape = (int(tokens.shape[0]), int(tokens.shape[1]))
        try:
            return self._run(tokens.to(self.device), None if mask is None else mask.to(self.device))
        finally:
            self._batch_shape = None

    def _shaped(self, fn: Edit) -> Edit:
        """``fn`` seeing ``[batch, pos, d]`` even where a family's hook sees ``[batch·pos, d]``."""

        def wrapped(h: Tensor) -> Tensor | None:
            shape = self._batch_shape
            if h.ndim == 2 and shape is not None and h.shape[0] == shape[0] * shape[1]:
                new = fn(h.view(shape[0], shape[1], h.shape[-1]))
                return None if new is None else new.reshape(h.shape)
            return fn(h)

        return wrapped

    @contextmanager
    def hooked(self, edits: Mapping[Site, Edit] | Sequence[tuple[Site, Edit]]) -> Iterator[None]:
        """Register ``edits`` (site -> ``fn(h) -> h' | None``) while the block runs."""
        items = list(edits.items()) if isinstance(edits, Mapping) else list(edits)
        handles = []
        try:
            for site, fn in items:
                handles.append(self._register(site, self._shaped(fn)))
            yield
        finally:
            for h in handles:
                h.remove()

    def read(
        self,
        tokens: Int[Tensor, "batch pos"],
        weights: Float[Tensor, "batch pos"],
        sites: Sequence[Site],
        *,
        mask: Tensor | None = None,
        stop: bool = True,
        check_finite: str | None = None,
    ) -> list[Float[Tensor, "batch d_model"]]:
        """Position-weighted activations ``[batch, d]`` at ``sites`` from one forward.

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

        def make(site: Site) -> Edit:
            def read_one(h: Tensor) -> None:
                reduced = torch.einsum("bp,bpd->bd", w.to(h.dtype), h)
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
        appended at a site) carries its other batch-shaped arguments (attention mask, rotary
        embeddings...) along: forward pre-hooks repeat them to the grown batch."""

        def expand(x: Any, n: int) -> Any:
            if isinstance(x, tuple):
                return tuple(expand(y, n) for y in x)
            if isinstance(x, Tensor) and x.ndim >= 2 and x.shape[0] != n and x.shape[0] > 1 and x.shape[0] % b == 0:
                return x[:b].repeat(n // b, *([1] * (x.ndim - 1)))
            return x

        def pre_hook(module: Any, args: tuple, kwargs: dict) -> Any:
            main = args[0] if args else kwargs.get("hidden_states")
            if not isinstance(main, Tensor) or main.shape[0] == b:
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
    def sites(self, layers: LayerSpec = "all", kind: str = "resid_post") -> list[Site]:
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

    def _run(self, tokens: Tensor, mask: Tensor | None) -> Any:
        # right padding: with a causal model a real token never attends to padding
        return self.bridge(tokens)


def access(model: Any) -> SiteAccess:
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
