"""Sites of a plain Hugging Face causal LM, found from its module structure.

Blocking and monitoring run on the model being fine-tuned — usually a plain Hugging Face model
owned by the user's loop or a ``transformers.Trainer``. Booting a ``TransformerBridge`` on it is
not an option: the bridge rewrites the module tree in place (parameter names gain
``._original_component``, fused projections are split), so the user's optimizer and checkpoints
would no longer match. Its sites are therefore reached through plain PyTorch hooks, with the
same layer convention as a bridge's hook points:

- ``resid_post`` layer 0: input of block 0 (forward pre-hook); layer ``l``: output of block ``l-1``;
- ``resid_pre`` layer ``l``: input of block ``l``;
- ``attn_out`` / ``mlp_out``: what block ``l``'s attention / MLP adds to the stream: the
  sub-module's output, or the output of the norm applied to it (post-norm families: Gemma 2/3,
  OLMo 2), or the output minus the residual the sub-module adds itself (BLOOM), or the output
  of the second projection (OPT, whose MLP is not a sub-module);
- ``resid_mid``: ``resid_pre + attn_out`` (sequential blocks only; a parallel-attention block,
  e.g. GPT-J, Phi, Falcon, GPT-NeoX with ``use_parallel_residual``, has none: SiteError);
- ``ln_final``: output of the final norm.

The module-name knowledge (which child is the attention, which list holds the blocks) lives here
and nowhere else.
"""

import inspect
from typing import Any, no_type_check

from torch import Tensor, nn

from revlens._types import ModuleLike
from revlens.errors import SiteError
from revlens.modes import SiteKind
from revlens.sites.access import Edit, SiteAccess
from revlens.sites.names import LayerSpec, Site, available_layers, hook_name, normalize_layers

__all__ = ["HFAccess", "find_blocks"]

_BLOCK_LISTS = ("h", "layers", "layer", "blocks")
_ATTN = ("attn", "self_attn", "attention", "self_attention")
_MLP = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
_MLP_OUT_PROJ = ("fc2",)  # OPT: the MLP's layers sit in the block itself
# the norm in front of the MLP of a sequential block (a block without one is parallel)
_MID_NORM = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2", "final_layer_norm")
# post-norm blocks normalise what a sub-module adds (Gemma 2/3, OLMo 2): the norms' outputs are added
_POST_NORMS = {"attn_out": "post_attention_layernorm", "mlp_out": "post_feedforward_layernorm"}
_FINAL_NORM = ("norm", "ln_f", "final_layer_norm", "final_layernorm")
# config flags of families whose blocks run attention and MLP in parallel on the same input
_PARALLEL_FLAGS = ("use_parallel_residual", "parallel_attn", "new_decoder_architecture")


def _config_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def find_blocks(model: nn.Module, n_layers: int) -> nn.ModuleList:
    """The decoder-block ``ModuleList`` of a Hugging Face model (``transformer.h``, ``model.layers``...)."""
    candidates = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) == n_layers
    ]
    preferred = [c for c in candidates if c[0].split(".")[-1] in _BLOCK_LISTS]
    chosen = preferred or candidates
    if not chosen:
        raise SiteError(
            f"cannot find the {n_layers} decoder blocks of {type(model).__name__} (no nn.ModuleList of "
            "that length); pass a revlens LensModel instead"
        )
    return chosen[0][1]


def _child(block: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        mod = getattr(block, name, None)
        if isinstance(mod, nn.Module):
            return mod
    return None


def _final_norm(model: nn.Module, blocks: nn.ModuleList) -> nn.Module | None:
    for parent in model.modules():
        if any(child is blocks for child in parent.children()):
            return _child(parent, _FINAL_NORM)
    return None


def _first(x: Any) -> Tensor:
    return x[0] if isinstance(x, tuple) else x


def _replace_first(x: Any, new: Tensor) -> Any:
    return (new, *x[1:]) if isinstance(x, tuple) else new


class HFAccess(SiteAccess):
    """Sites of a Hugging Face causal LM (``nn.Module`` with a ``config``)."""

    def __init__(self, model: ModuleLike) -> None:
        super().__init__()
        if not isinstance(model, nn.Module) or getattr(model, "config", None) is None:
            raise SiteError(
                f"cannot reach the residual stream of {type(model).__name__}: expected a Hugging Face "
                "model, a LensModel or a TransformerBridge"
            )
        cfg = model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        n_layers = _config_int(cfg, "num_hidden_layers", "n_layer", "num_layers")
        d_model = _config_int(cfg, "hidden_size", "n_embd", "d_model")
        if n_layers is None or d_model is None:
            raise SiteError(f"cannot read n_layers / d_model from {type(cfg).__name__}")
        self.module = model
        self.n_layers, self.d_model = n_layers, d_model
        self.n_ctx = _config_int(cfg, "max_position_embeddings", "n_positions", "n_ctx") or 0
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        self.vocab_size = int(emb.num_embeddings) if emb is not None else int(cfg.vocab_size)
        self.blocks = find_blocks(model, n_layers)

    def _parallel(self, block: nn.Module) -> bool:
        """Whether ``block`` runs attention and MLP on the same input (no ``resid_mid``)."""
        cfg = getattr(self.module.config, "text_config", None) or self.module.config
        if any(getattr(cfg, flag, False) is True for flag in _PARALLEL_FLAGS):
            return True
        return (
            _child(block, _MID_NORM) is None
            and getattr(block, _POST_NORMS["mlp_out"], None) is None
        )

    def _added(self, block: nn.Module, kind: str) -> tuple[nn.Module, str] | None:
        """(module, how) whose output is what ``block``'s attention / MLP adds to the stream."""
        if isinstance(getattr(block, _POST_NORMS["mlp_out"], None), nn.Module):
            return getattr(block, _POST_NORMS[kind]), "post"
        mod = _child(block, _ATTN if kind == "attn_out" else _MLP)
        if mod is None and kind == "mlp_out":
            proj = _child(block, _MLP_OUT_PROJ)
            return (proj, "post") if proj is not None else None
        if mod is None:
            return None
        adds_residual = "residual" in inspect.signature(mod.forward).parameters  # BLOOM
        return mod, "post_minus_residual" if adds_residual else "post"

    def _target(self, site: Site) -> tuple[nn.Module, str]:
        """(module, "pre" | "post" | "post_minus_residual") carrying the site."""
        kind, layer = site.kind, site.layer
        if kind == "resid_post":
            return (self.blocks[0], "pre") if layer == 0 else (self.blocks[layer - 1], "post")
        if kind == "resid_pre":
            return self.blocks[layer], "pre"
        if kind == "ln_final":
            norm = _final_norm(self.module, self.blocks)
            if norm is None:
                raise SiteError(f"cannot find the final norm of {type(self.module).__name__}")
            return norm, "post"
        block = self.blocks[layer]
        if kind == "resid_mid":
            if self._parallel(block):
                raise SiteError(
                    f"site resid_mid is not available on {type(block).__name__}: its attention and MLP run in "
                    "parallel on the same input (no stream between them); use resid_pre, attn_out or mlp_out"
                )
            found = self._added(
                block, "attn_out"
            )  # resid_mid is edited through what attention adds
        else:
            found = self._added(block, kind)
        if found is None:
            raise SiteError(
                f"site {kind} is not available on {type(block).__name__} (no attention / MLP "
                f"sub-module named {' / '.join(_ATTN + _MLP)})"
            )
        return found

    @no_type_check  # validates its own arguments
    def sites(self, layers: LayerSpec = "all", kind: SiteKind = "resid_post") -> list[Site]:
        """Validated sites of ``kind`` (also checks the family has the module carrying it)."""
        chosen = normalize_layers(layers, available_layers(self.n_layers, kind))
        out = [Site(layer, kind, hook_name(kind, layer)) for layer in chosen]
        for s in out:
            self._target(s)
        return out

    def _register(self, site: Site, fn: Edit) -> Any:
        module, where = self._target(site)
        if where == "post":

            def post_hook(mod: Any, args: Any, output: Any) -> Any:
                new = fn(_first(output))
                return None if new is None else _replace_first(output, new)

            return module.register_forward_hook(post_hook)
        if where == "post_minus_residual":

            def added_hook(mod: Any, args: tuple, kwargs: dict, output: Any) -> Any:
                residual = kwargs["residual"] if "residual" in kwargs else args[1]
                new = fn(_first(output) - residual)
                return None if new is None else _replace_first(output, new + residual)

            return module.register_forward_hook(added_hook, with_kwargs=True)

        def pre_hook(mod: Any, args: tuple, kwargs: dict) -> Any:
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def _expansion_modules(self) -> list[nn.Module]:
        out: list[nn.Module] = []
        for block in self.blocks:
            out.append(block)
            attn = _child(block, _ATTN)
            if attn is not None:
                out.append(attn)
        return out

    def _run(self, tokens: Tensor, mask: Tensor | None, position_ids: Tensor | None = None) -> Any:
        extra = {} if position_ids is None else {"position_ids": position_ids}
        return self.module(input_ids=tokens, attention_mask=mask, use_cache=False, **extra).logits
