"""KV-cached decoding of an extended forward, with revlens' edits acting exactly as in a full one.

Greedy generation (:mod:`revlens.metrics.generation`) keeps the layout of
:mod:`revlens.sites.layout`: prompts right-padded at columns ``< W``, new tokens at ``W, W + 1, ...``
with explicit position ids and an attention mask over the padding. The full-forward path re-runs
all ``W + t`` columns at step ``t``. The cached path runs the prompt once (*prefill*: an ordinary
extended forward of width ``W``) and then one column per step, reusing the keys and values of the
earlier columns (Hugging Face ``cache``). Both see the same columns, masks and positions, so they
give the same logits up to float rounding (tested to 1e-4, tokens equal).

What makes the edits exact: every revlens intervention is **position-wise** — the edited value of
a column depends only on that column and on whether it is a prompt column (and which) or a new
one. Such an edit is marked with :func:`positionwise`. During a cached step the column being
decoded reaches the hook alone (``[batch, 1, d]``); :meth:`SiteAccess.hooked` wraps every edit so
that, inside :func:`decoding`, it is shown that column behind ``W`` filler prompt columns (the
shape of an extended forward, so ``current_layout()`` masks and patch sources apply as usual) and
keeps only the new column of the result. An edit that is not marked cannot be shown a single
column faithfully (it may read other positions), so the cached path refuses to run while one is
registered (:func:`obstacle`), as it does while any hook that revlens did not register sits on the
model (a TransformerLens hook, a user's ``register_forward_hook``).

Where the forward runs: a plain Hugging Face model runs itself. A ``TransformerBridge`` does not:
TransformerLens 4.3's attention bridge gives wrong logits with a cache (off by up to 0.6, a
known upstream bug). :func:`plain_twin` builds the bridge's Hugging Face class on the meta device
and hands it the **same** parameter and buffer tensors (no copy: a weight swap into the bridge is
seen by the twin), and the edits registered on the bridge are registered on the twin's structural
hooks (:mod:`revlens.sites.hf`, same layer meaning) for the generation, and removed after it.
"""

import copy
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from revlens.errors import RevlensError
from revlens.sites.names import Site

__all__ = [
    "ActiveEdit",
    "CachedPathError",
    "active_edits",
    "cache_kwarg",
    "decoding",
    "for_decoding",
    "is_positionwise",
    "obstacle",
    "plain_twin",
    "positionwise",
    "recorded",
    "takes_kwarg",
]

_MARK = "__revlens_positionwise__"
_ORIG = "_original_component"


class CachedPathError(RevlensError, RuntimeError):
    """The KV-cached generation path cannot reproduce the full forward here (the message says why:
    a hook revlens did not register, an edit not marked position-wise, a model without a cache)."""


def positionwise(fn: Callable[[Tensor], Tensor | None]) -> Callable[[Tensor], Tensor | None]:
    """Mark an edit ``fn(h) -> h'`` as position-wise (see the module docstring); returns ``fn``."""
    setattr(fn, _MARK, True)
    return fn


def is_positionwise(fn: object) -> bool:
    """Whether ``fn`` was marked with :func:`positionwise`."""
    return bool(getattr(fn, _MARK, False))


# --------------------------------------------------------------------------- the decoding step
_DECODING: ContextVar[int | None] = ContextVar("revlens_decoding_width", default=None)


@contextmanager
def decoding(prompt_width: int) -> Iterator[None]:
    """While the block runs, forwards are cached steps: the hooks see only new columns, of an
    extended forward whose prompt is ``prompt_width`` columns wide."""
    token = _DECODING.set(int(prompt_width))
    try:
        yield
    finally:
        _DECODING.reset(token)


def for_decoding(fn: Callable[[Tensor], Tensor | None]) -> Callable[[Tensor], Tensor | None]:
    """``fn`` as registered by :meth:`SiteAccess.hooked`: unchanged outside :func:`decoding`; in a
    cached step shown its new columns behind ``W`` zero prompt columns (the result's new columns
    are kept). Raises :class:`CachedPathError` for an edit that is not position-wise."""

    def wrapped(h: Tensor) -> Tensor | None:
        width = _DECODING.get()
        if width is None:
            return fn(h)
        if not is_positionwise(fn):
            raise CachedPathError(
                f"edit {getattr(fn, '__qualname__', fn)!r} is not marked position-wise "
                "(revlens.sites.cached.positionwise): it cannot run in a cached step"
            )
        if h.ndim != 3:
            raise CachedPathError(
                f"a cached step reached a hook with an activation of shape {tuple(h.shape)}; "
                "expected [batch, new, d_model]"
            )
        filler = h.new_zeros(h.shape[0], width, h.shape[2])
        out = fn(torch.cat([filler, h], 1))
        return None if out is None else out[:, width:]

    if is_positionwise(fn):
        positionwise(wrapped)
    return wrapped


# --------------------------------------------------------------------------- the edits registered now
@dataclass(frozen=True)
class ActiveEdit:
    """One edit registered by :meth:`SiteAccess.hooked` and not yet removed.

    Attributes:
        module: the access's module (a bridge or a Hugging Face model).
        site: the :class:`~revlens.sites.Site`.
        fn: the edit as given (not wrapped).
        hook_ids: ids of the hook handles it registered.
    """

    module: nn.Module
    site: Site
    fn: Callable[[Tensor], Tensor | None]
    hook_ids: tuple[int, ...]


_ACTIVE: list[ActiveEdit] = []


@contextmanager
def recorded(entries: list[ActiveEdit]) -> Iterator[None]:
    """Record ``entries`` as active while the block runs (used by :meth:`SiteAccess.hooked`)."""
    _ACTIVE.extend(entries)
    try:
        yield
    finally:
        for e in entries:
            for i, other in enumerate(_ACTIVE):
                if other is e:
                    del _ACTIVE[i]
                    break


def active_edits(module: nn.Module) -> list[ActiveEdit]:
    """The edits registered on ``module`` (by any :class:`SiteAccess`) now, in registration order."""
    return [e for e in _ACTIVE if e.module is module]


def _plumbing(mod: nn.Module, fn: Any) -> bool:
    """A hook TransformerLens' bridge wires into its own components (e.g. ``BlockBridge``'s capture
    hooks feeding ``hook_resid_mid``): bridge internals, not an edit. Hooks on a ``HookPoint`` (TL's
    ``add_hook`` / ``hooks()``, user-facing) are never plumbing."""
    if type(mod).__name__ == "HookPoint":
        return False
    return str(getattr(fn, "__module__", "")).startswith("transformer_lens.model_bridge")


def _hook_ids(roots: list[nn.Module]) -> dict[int, str]:
    """hook id -> the module name carrying it, over every module under ``roots`` (bridge plumbing
    left out)."""
    out: dict[int, str] = {}
    for root in roots:
        for name, mod in root.named_modules(remove_duplicate=False):
            for hooks in (mod._forward_hooks, mod._forward_pre_hooks):
                out.update(
                    {
                        i: name or type(mod).__name__
                        for i, fn in hooks.items()
                        if not _plumbing(mod, fn)
                    }
                )
    return out


def _roots(module: nn.Module) -> list[nn.Module]:
    orig = getattr(module, "original_model", None)
    return [module] + ([orig] if isinstance(orig, nn.Module) and orig is not module else [])


def obstacle(module: nn.Module, run: nn.Module) -> str | None:
    """Why the cached path cannot reproduce the full forward of ``module`` (the access's module)
    when ``run`` (the module itself or its :func:`plain_twin`) runs it; ``None`` when it can."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return "global forward hooks are registered (torch.nn.modules.module.register_module_forward_hook)"
    if cache_kwarg(run) is None:
        return f"{type(run).__name__}.forward takes no KV cache (neither `cache` nor `past_key_values`)"
    mine = active_edits(module)
    loose = [e for e in mine if not is_positionwise(e.fn)]
    if loose:
        names = sorted({getattr(e.fn, "__qualname__", repr(e.fn)) for e in loose})
        return f"edits not marked position-wise are registered at {[e.site.hook_name for e in loose]} ({names})"
    ours = {
        i for e in mine for i in e.hook_ids
    }  # edits registered through another access are foreign here
    foreign = {i: name for i, name in _hook_ids(_roots(module)).items() if i not in ours}
    if foreign:
        return f"hooks that revlens did not register sit on {sorted(set(foreign.values()))[:5]}"
    return None


# --------------------------------------------------------------------------- the model that runs
def takes_kwarg(model: nn.Module, name: str) -> bool:
    """Whether ``model``'s forward (or, for a PEFT model, its base model's) names ``name``."""
    for mod in (model, getattr(model, "get_base_model", lambda: None)()):
        if isinstance(mod, nn.Module) and name in inspect.signature(mod.forward).parameters:
            return True
    return False


def cache_kwarg(model: nn.Module) -> str | None:
    """The name under which ``model``'s forward takes a KV cache (``cache`` in transformers 5.25,
    ``past_key_values`` before), or ``None``."""
    return next((name for name in ("cache", "past_key_values") if takes_kwarg(model, name)), None)


def _state(module: nn.Module, prefix: str, out: dict[str, Tensor]) -> None:
    """Hugging Face name -> parameter / buffer (non-persistent ones too), under a bridge's
    components following only ``_original_component`` (as :func:`revlens.loading.hf_parameters`)."""
    orig = module._modules.get(_ORIG)
    if orig is not None:
        _state(orig, prefix, out)
        return
    for name, t in [*module._parameters.items(), *module._buffers.items()]:
        if t is not None:
            out[prefix + name] = t
    for name, child in module._modules.items():
        if child is not None:
            _state(child, f"{prefix}{name}.", out)


def plain_twin(hf_model: nn.Module) -> nn.Module:
    """A plain Hugging Face model of ``hf_model``'s class holding **its** tensors (a bridge's
    ``original_model``, whose modules the bridge wrapped): built on the meta device, then every
    parameter and buffer is the source's own tensor (no copy). Eval mode, no hooks.

    Raises:
        CachedPathError: a tensor of the twin has no counterpart of the same shape in the source,
            or the source's is on the meta device (offloaded).
    """
    state: dict[str, Tensor] = {}
    _state(hf_model, "", state)
    with torch.device("meta"):
        twin = type(hf_model)(copy.deepcopy(hf_model.config))
    for mname, mod in twin.named_modules(remove_duplicate=False):
        for table in (mod._parameters, mod._buffers):
            for name, t in list(table.items()):
                if t is None:
                    continue
                key = f"{mname}.{name}" if mname else name
                src = state.get(key)
                if src is not None and src.device.type == "meta":
                    raise CachedPathError(
                        f"cannot build a plain {type(hf_model).__name__} from the bridge: {key} "
                        "is on the meta device (offloaded weights, device_map)"
                    )
                if src is None or tuple(src.shape) != tuple(t.shape):
                    have = "absent" if src is None else f"of shape {tuple(src.shape)}"
                    raise CachedPathError(
                        f"cannot build a plain {type(hf_model).__name__} from the bridge: {key} "
                        f"{tuple(t.shape)} is {have} in the bridge's model"
                    )
                table[name] = src
    return twin.eval()
