"""``WeightsConfig``: the settings of :func:`revlens.weights.weight_reversion`, validated up front."""

import re
from dataclasses import dataclass
from typing import Any, no_type_check

from revlens._config import Config, as_bool, as_int, as_layers, as_str_tuple, option
from revlens.errors import ConfigError
from revlens.modes import SVD_METHODS, check_mode

__all__ = ["WeightsConfig"]

_DTYPES = ("float64", "float32")


def _ints(flag: str, raw: Any) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in raw)
    except ValueError:
        raise ConfigError(f"{flag} takes integers, got {' '.join(raw)}") from None


@no_type_check  # validates its own fields (typed errors), also under the test type-checker
@dataclass
class WeightsConfig(Config):
    """Settings of :func:`~revlens.weights.weight_reversion` (saved with the result; the CLI
    builds the same object)."""

    ks: tuple[int, ...] = option(
        (1, 4, 16), "ranks k of V's top-k singular subspaces", metavar="K", parse=_ints, nargs="+"
    )
    n_random: int = option(
        32, "random subspaces of each rank per module (the random-subspace null; 0: none)"
    )
    params: str = option(".*", "regex: which parameters (Hugging Face names, re.search) are read")
    layers: str | tuple[int, ...] = option(
        "all",
        "block indices to read ('all'; non-block parameters such as embeddings are layer -1)",
        metavar="L",
    )
    runs: tuple[str, ...] | None = option(
        None, "runs to read (default: all)", metavar="RUN", cli=False
    )
    dtype: str = option("float64", "dtype of the arithmetic (float64 or float32)", choices=_DTYPES)
    device: str = option(
        "cpu", "device of the arithmetic (reads are always streamed through host memory)"
    )
    svd: str = option(
        "auto",
        "top-k singular vectors of V: full SVD, randomized low-rank, or auto (exact "
        "eigendecomposition of the short side's Gram matrix up to 2048, else low-rank)",
        choices=SVD_METHODS,
    )
    seed: int = option(0, "seed of the random subspaces")
    prefetch: int = option(
        0,
        "tensors read ahead by a background thread while one is measured (0: none, "
        "the kernel reads ahead anyway; memory: that many tensors of one module more)",
    )
    fingerprints: bool = option(
        False, "hash every checkpoint's files for the provenance (reads them twice)"
    )

    def validate(self) -> None:
        """Check every field (typed errors naming the field)."""
        ks = (self.ks,) if isinstance(self.ks, int) else tuple(self.ks)
        if not ks:
            raise ConfigError("ks is empty; give at least one rank k >= 1")
        self.ks = tuple(sorted({as_int("ks", k, min=1) for k in ks}))
        self.n_random = as_int("n_random", self.n_random, min=0)
        if not isinstance(self.params, str):
            raise ConfigError(
                f"params must be a regular expression (a string), got {self.params!r}"
            )
        try:
            re.compile(self.params)
        except re.error as exc:
            raise ConfigError(
                f"params={self.params!r} is not a regular expression: {exc}"
            ) from None
        self.layers = as_layers(self.layers)
        if self.runs is not None:
            self.runs = as_str_tuple("runs", self.runs)
        check_mode("dtype", self.dtype, _DTYPES)
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(
                f"device must be a device name such as 'cpu' or 'cuda', got {self.device!r}"
            )
        check_mode("svd", self.svd, SVD_METHODS)
        self.seed = as_int("seed", self.seed)
        self.prefetch = as_int("prefetch", self.prefetch, min=0)
        self.fingerprints = as_bool("fingerprints", self.fingerprints)
