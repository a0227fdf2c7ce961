"""``revlens.collect`` and ``revlens.analyze`` are both a module and the function users call.

``import revlens`` is lazy, so the first import of the sub-module ``revlens.collect`` (by any code)
binds the *module* as the package attribute, where the package used to bind the function. Making
the module callable (forwarding to its function) keeps ``revlens.collect(history, probes)`` and
``from revlens.collect import HistoryStats`` both working, whichever import happens first.
"""

import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = ["make_callable"]


def make_callable(module_name: str, fn: Callable[..., Any]) -> None:
    """Make ``sys.modules[module_name]`` callable as ``fn`` (its docstring too)."""

    class _CallableModule(types.ModuleType):
        __doc__ = fn.__doc__

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallableModule
