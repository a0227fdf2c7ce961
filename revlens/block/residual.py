"""Read (and edit) the residual stream of a model **while it trains** — the one place that does.

Blocking and monitoring run on the model being fine-tuned, which is usually a plain Hugging Face
model owned by the user's loop or ``transformers.Trainer``. Booting a ``TransformerBridge`` on it
is not an option: the bridge rewrites the Hugging Face module tree in place (parameter names gain
``._original_component``, q/k/v become separate parameters, ``save_pretrained`` breaks), so the
user's optimizer and checkpoints would no longer match. revlens therefore reads a Hugging Face
model through plain PyTorch forward hooks on its decoder blocks, with the layer semantics of
:mod:`revlens.hooks`: layer 0 is the stream entering block 0 (embeddings), layer ``l >= 1`` the
output of block ``l - 1``. A :class:`~revlens.model.LensModel` or ``TransformerBridge`` is read
through its own hook points (built by :func:`revlens.hooks.resolve_sites`).

Only the ``resid_post`` site is supported here.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from revlens.errors import RevlensError, SiteError
from revlens.hooks import normalize_layers

__all__ = ["ResidualReader"]

Edit = Callable[[int, Tensor], Tensor]


class _Stop(Exception):
    """Raised by the deepest read hook to skip the rest of the forward pass."""


def _config_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _find_blocks(model: nn.Module, n_layers: int) -> nn.ModuleList:
    """The decoder-block ``ModuleList`` of a Hugging Face model (``transformer.h``, ``model.layers``...)."""
    candidates = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) == n_layers
    ]
    preferred = [c for c in candidates if c[0].split(".")[-1] in ("h", "layers", "layer", "blocks")]
    chosen = preferred or candidates
    if not chosen:
        raise SiteError(
            f"cannot find the {n_layers} decoder blocks of {type(model).__name__} (no nn.ModuleList of "
            "that length); pass a revlens LensModel instead"
        )
    return chosen[0][1]


class ResidualReader:
    """Residual-stream access to a model being trained, with gradients when enabled.

    Args:
        model: a Hugging Face causal LM (``nn.Module`` with a ``config``), a
            :class:`~revlens.model.LensModel` or a ``TransformerBridge``.
        layers: revlens layer indices to read (``0..n_layers``).

    Raises:
        SiteError: a layer the model does not have, or a model whose blocks cannot be found.
    """

    def __init__(self, model: Any, layers: Sequence[int] | str = "all") -> None:
        from revlens.model import LensModel

        bridge = model.bridge if isinstance(model, LensModel) else None
        if bridge is None and hasattr(model, "hook_dict") and hasattr(model, "cfg"):
            bridge = model
        self.bridge = bridge
        if bridge is not None:
            self.module: nn.Module = bridge
            self.n_layers = int(bridge.cfg.n_layers)
            self.d_model = int(bridge.cfg.d_model)
            self.n_ctx = int(bridge.cfg.n_ctx)
            self.vocab_size = int(bridge.cfg.d_vocab)
        else:
            if not isinstance(model, nn.Module) or getattr(model, "config", None) is None:
                raise SiteError(
                    f"cannot read the residual stream of {type(model).__name__}: expected a Hugging Face "
                    "model, a LensModel or a TransformerBridge"
                )
            cfg = model.config
            n_layers = _config_int(cfg, "num_hidden_layers", "n_layer", "num_layers")
            d_model = _config_int(cfg, "hidden_size", "n_embd", "d_model")
            if n_layers is None or d_model is None:
                raise SiteError(f"cannot read n_layers / d_model from {type(cfg).__name__}")
            self.module = model
            self.n_layers, self.d_model = n_layers, d_model
            self.n_ctx = _config_int(cfg, "max_position_embeddings", "n_positions", "n_ctx") or 0
            emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
            self.vocab_size = int(emb.num_embeddings) if emb is not None else int(cfg.vocab_size)
            self._blocks = _find_blocks(model, n_layers)
        self.layers = normalize_layers(
            list(layers) if not isinstance(layers, str) else layers, list(range(self.n_layers + 1))
        )

    # ------------------------------------------------------------------ hooks
    def _register(self, layer: int, fn: Callable[[Tensor], Tensor | None]) -> Any:
        """Register ``fn(h) -> h' | None`` on ``layer``'s residual; returns a removable handle."""
        if self.bridge is not None:
            from revlens.hooks import hook_point, resolve_sites

            site = resolve_sites(self.bridge, [layer], "resid_post")[0]

            def bridge_hook(module: Any, args: Any, output: Any) -> Any:
                return fn(output)

            return hook_point(self.bridge, site).register_forward_hook(bridge_hook)
        if layer == 0:

            def pre_hook(module: Any, args: tuple, kwargs: dict) -> Any:
                if args:
                    new = fn(args[0])
                    return None if new is None else ((new, *args[1:]), kwargs)
                new = fn(kwargs["hidden_states"])
                return None if new is None else (args, {**kwargs, "hidden_states": new})

            return self._blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)

        def post_hook(module: Any, args: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                new = fn(output[0])
                return None if new is None else (new, *output[1:])
            return fn(output)

        return self._blocks[layer - 1].register_forward_hook(post_hook)

    def _forward(self, tokens: Tensor, mask: Tensor | None) -> None:
        if self.bridge is not None:
            self.bridge(tokens)  # right padding: real tokens never attend to it (causal)
        else:
            self.module(input_ids=tokens, attention_mask=mask, use_cache=False)

    # ------------------------------------------------------------------ reading
    def per_prompt(
        self,
        tokens: Int[Tensor, "batch pos"],
        weights: Float[Tensor, "batch pos"],
        layers: Sequence[int] | None = None,
        *,
        mask: Int[Tensor, "batch pos"] | None = None,
    ) -> Float[Tensor, "batch layer d_model"]:
        """Position-weighted residual per prompt at ``layers`` (default: the reader's layers).

        Runs one forward in **eval mode** (the train/eval state is restored), stopping after the
        deepest layer read. Differentiable when grad mode is on.
        """
        return torch.stack(self.per_layer(tokens, weights, layers, mask=mask), dim=1)

    def per_layer(
        self,
        tokens: Int[Tensor, "batch pos"],
        weights: Float[Tensor, "batch pos"],
        layers: Sequence[int] | None = None,
        *,
        mask: Int[Tensor, "batch pos"] | None = None,
    ) -> list[Tensor]:
        """Like :meth:`per_prompt`, one ``[batch, d_model]`` tensor per layer, not stacked: the
        autograd graph of layer ``l``'s tensor then holds only the blocks below it, so a backward
        from it skips the blocks above (a stacked tensor would send zeros through all of them)."""
        layers = list(self.layers if layers is None else layers)
        store: dict[int, Tensor] = {}
        deepest = max(layers)
        device = next(self.module.parameters()).device
        w = weights.to(device)

        def make(layer: int) -> Callable[[Tensor], None]:
            def read(h: Tensor) -> None:
                store[layer] = torch.einsum("bp,bpd->bd", w.to(h.dtype), h)
                if layer == deepest:
                    raise _Stop

            return read

        was_training = self.module.training
        handles = []
        try:
            self.module.eval()
            handles = [self._register(layer, make(layer)) for layer in layers]
            with suppress(_Stop):
                self._forward(tokens.to(device), None if mask is None else mask.to(device))
        finally:
            for h in handles:
                h.remove()
            self.module.train(was_training)
        missing = [layer for layer in layers if layer not in store]
        if missing:
            raise RevlensError(f"residual hooks at layers {missing} never fired")
        return [store[layer] for layer in layers]

    @contextmanager
    def editing(self, edit: Edit, *, train_only: bool = True) -> Iterator[None]:
        """Replace the residual ``h`` at each reader layer by ``edit(layer, h)`` during forwards.

        With ``train_only`` (default) the edit applies only while the model is in train mode, so
        measurements (eval mode) see the unedited model. Hooks are removed on exit, also on error.
        """
        module = self.module

        def make(layer: int) -> Callable[[Tensor], Tensor | None]:
            def fn(h: Tensor) -> Tensor | None:
                if train_only and not module.training:
                    return None
                return edit(layer, h)

            return fn

        handles = []
        try:
            handles = [self._register(layer, make(layer)) for layer in self.layers]
            yield
        finally:
            for h in handles:
                h.remove()

    def parameters(self) -> list[nn.Parameter]:
        """The model's trainable parameters (unique)."""
        seen: set[int] = set()
        out = []
        for p in self.module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out
