"""The model side of a weight swap: a booted model's Hugging Face parameters, and the bridge's
derived copies of them.

A ``TransformerBridge`` inserts its components into the Hugging Face module tree: each wrapped
module becomes a bridge component whose ``_original_component`` is the HF module, and some
bridges add submodules of their own (q/k/v splits, ``ln1`` aliases). :func:`hf_parameters` walks
the tree following only ``_original_component`` below a bridge component, which yields exactly
the parameter names of a plain ``from_pretrained`` model. Bridges that split a fused projection
(GPT-NeoX / BLOOM / Falcon ``query_key_value``, Phi-3 ``gate_up_proj``) either keep views of the
fused weight (updated by any in-place copy) or *copies* (stale after one);
:func:`refresh_bridge` re-derives them with the bridge's own split function.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from revlens.errors import ShapeMismatchError

__all__ = ["Targets", "hf_parameters", "refresh_bridge", "stale_copies"]

_ORIG = "_original_component"
# Checkpoint keys that name buffers, never learned weights (old HF layouts, bridge additions).
_DEFAULT_IGNORED = (
    r"(^|\.)attn\.bias$",
    r"(^|\.)attn\.masked_bias$",
    r"attention\.bias$",
    r"attention\.masked_bias$",
    r"rotary_emb\.inv_freq$",
    r"(^|\.)position_ids$",
)
# (split function attribute, parts it returns) of the bridge components that split fused weights.
_SPLITTERS = (("split_qkv_matrix", ("q", "k", "v")), ("split_gate_up_matrix", ("gate", "in")))


def _walk(
    module: torch.nn.Module, prefix: str, params: dict, buffers: dict, modules: dict | None = None
) -> None:
    orig = module._modules.get(_ORIG)
    if orig is not None:  # a bridge component: only the wrapped HF module is HF state
        _walk(orig, prefix, params, buffers, modules)
        return
    if modules is not None:
        modules[prefix.removesuffix(".")] = module
    for name, p in module._parameters.items():
        if p is not None:
            params[prefix + name] = p
    for name, b in module._buffers.items():
        if b is not None and name not in module._non_persistent_buffers_set:
            buffers[prefix + name] = b
    for name, child in module._modules.items():
        if child is not None:
            _walk(child, f"{prefix}{name}.", params, buffers, modules)


def hf_parameters(model: torch.nn.Module) -> dict[str, Tensor]:
    """Parameter name -> parameter, named as in a plain Hugging Face model of this class.

    Works on a bare HF model and on a bridge's ``original_model`` alike (bridge segments and
    bridge-only submodules are skipped). Tied parameters appear under every name.
    """
    params: dict[str, Tensor] = {}
    _walk(model, "", params, {})
    return params


@dataclass
class Targets:
    """Everything a loader writes into: HF-named parameters, tie groups, optional buffers.

    Attributes:
        params: HF parameter name -> parameter (tied names map to one object).
        buffers: persistent buffers, loaded when a checkpoint holds them, never required.
        leader: name -> the name that stands for its tie group (the tie source, e.g. the input
            embedding for a tied ``lm_head.weight``).
        ignore: regex of checkpoint keys that are never an error (HF's own ignore lists, old
            buffer names).
        optional: regex of parameters a checkpoint may lack (HF ``_keys_to_ignore_on_load_missing``).
        modules: HF module name -> module (the wrapped HF modules, not bridge components).
    """

    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    leader: dict[str, str]
    ignore: re.Pattern
    optional: re.Pattern | None = None
    all_names: dict[str, Tensor] = field(default_factory=dict)
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> "Targets":
        """Collect the targets of a (possibly bridged) Hugging Face model."""
        params: dict[str, Tensor] = {}
        buffers: dict[str, Tensor] = {}
        modules: dict[str, torch.nn.Module] = {}
        _walk(model, "", params, buffers, modules)
        tied_targets = set(getattr(model, "all_tied_weights_keys", None) or {})
        by_id: dict[int, list[str]] = {}
        for name, p in params.items():
            by_id.setdefault(id(p), []).append(name)
        leader = {}
        for names in by_id.values():
            head = next((n for n in names if n not in tied_targets), names[0])
            leader.update({n: head for n in names})
        patterns = [
            *_DEFAULT_IGNORED,
            *(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []),
        ]
        missing_ok = list(getattr(model, "_keys_to_ignore_on_load_missing", None) or [])
        return cls(
            params=params,
            buffers=buffers,
            leader=leader,
            ignore=re.compile("|".join(f"(?:{p})" for p in patterns)),
            optional=re.compile("|".join(f"(?:{p})" for p in missing_ok)) if missing_ok else None,
            all_names={**buffers, **params},
            modules=modules,
        )

    def required(self) -> list[str]:
        """One name per parameter object (the group leader), in model order."""
        return list(dict.fromkeys(self.leader[n] for n in self.params))

    def signature(self) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape, for every HF parameter name (tied names included)."""
        return {name: tuple(p.shape) for name, p in self.params.items()}

    def get(self, name: str) -> Tensor | None:
        """The parameter or persistent buffer called ``name`` (``None`` if there is none)."""
        return self.all_names.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.all_names

    def nbytes(self) -> int:
        """Bytes of all distinct parameters."""
        return sum(self.params[n].numel() * self.params[n].element_size() for n in self.required())


def _splitting_components(bridge: Any) -> Iterator[tuple[str, Any, Any, tuple[str, ...]]]:
    for name, module in bridge.named_modules():
        for attr, parts in _SPLITTERS:
            split = getattr(module, attr, None)
            orig = getattr(module, "original_component", None)
            if (
                callable(split)
                and orig is not None
                and all(
                    getattr(getattr(module, p, None), "original_component", None) is not None
                    for p in parts
                )
            ):
                yield name, module, split, parts


def _derived_pairs(bridge: Any) -> Iterator[tuple[str, Tensor, Tensor]]:
    """``(name, live copy, freshly derived value)`` for every split copy the bridge keeps."""
    seen: set[int] = set()
    for name, module, split, parts in _splitting_components(bridge):
        if id(module) in seen:  # the same component is reachable under aliases
            continue
        seen.add(id(module))
        fresh = split(module.original_component)
        for part, linear in zip(parts, fresh):
            live = getattr(module, part).original_component
            for pname in ("weight", "bias"):
                dst, src = getattr(live, pname, None), getattr(linear, pname, None)
                if dst is not None and src is not None:
                    yield f"{name}.{part}.{pname}", dst, src


@torch.no_grad()
def refresh_bridge(bridge: torch.nn.Module) -> int:
    """Re-derive the bridge's split copies of fused weights after the fused weights changed.

    Calls each splitting component's own split function (``split_qkv_matrix`` /
    ``split_gate_up_matrix``, what the bridge ran at boot) and copies the result **in place**
    into the q/k/v (gate/up) modules the forward uses, so hooks and references stay valid.
    Views of the fused weight need nothing and are skipped.

    Returns:
        how many tensors were re-written.
    """
    n = 0
    for name, dst, src in _derived_pairs(bridge):
        if dst.shape != src.shape:
            raise ShapeMismatchError(
                f"bridge copy {name} has shape {tuple(dst.shape)}, its split gives {tuple(src.shape)}"
            )
        if dst.data_ptr() != src.data_ptr():
            dst.copy_(src)
            n += 1
    return n


@torch.no_grad()
def stale_copies(bridge: torch.nn.Module) -> list[str]:
    """Names of split copies that differ from what the fused weights give now (``[]`` = in sync)."""
    return [
        name
        for name, dst, src in _derived_pairs(bridge)
        if dst.shape != src.shape or not torch.equal(dst, src.to(dst.dtype))
    ]
