"""Small hand-made result tables with the column contracts of Report / CausalReport."""

import numpy as np
import pandas as pd
import pytest

RUNS = ("seed0", "<b>seed1</b>")
STEPS = (1, 2, 5, 20)
LAYERS = (0, 1, 2)
METHODS = ("mean_diff", "pca")


def make_drift(runs=RUNS, control_run: str | None = "ctrl") -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    all_runs = [*runs, *([control_run] if control_run else [])]
    for run in all_runs:
        kind = "control" if run == control_run else "run"
        for step in STEPS:
            for layer in LAYERS:
                for method in METHODS:
                    cos = (
                        float(np.round(rng.uniform(-0.5, 0.9), 4))
                        if kind == "run"
                        else 0.01 * layer
                    )
                    rows.append({
                        "run": run, "step": step, "layer": layer, "method": method,
                        "control": kind == "control", "kind": kind, "cos": cos,
                        "cos_lo": cos - 0.05, "cos_hi": cos + 0.05, "proj": cos * 2, "frac": cos**2,
                        "norm": 2.0, "null_iso_p99": 0.205, "null_cov_p99": 0.31 + 0.01 * layer,
                        "p_iso": 1e-5 if cos > 0.205 else 0.3, "p_cov": 0.01,
                        "significant": cos > 0.205, "significant_cov": cos > 0.31 + 0.01 * layer,
                    })  # fmt: skip
    return pd.DataFrame(rows)


def make_directions() -> pd.DataFrame:
    rows = []
    for layer in LAYERS:
        for m in METHODS:
            row = {"layer": layer, "method": m, "stability": 0.9 - 0.1 * layer, "perm_p": 0.001,
                   "norm": 1.5 + layer}  # fmt: skip
            for other in METHODS:
                row[f"agree_{other}"] = 1.0 if other == m else 0.8 - 0.2 * layer
            rows.append(row)
    return pd.DataFrame(rows)


def make_effects(n_controls: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for run in RUNS:
        for kind in ("clamp", "patch"):
            for step in (5, 20):
                for layer in LAYERS:
                    dirs = [("v_rev", "v_rev")]
                    dirs += [
                        (f"random_{ct}_{k}", ct) for ct in ("iso", "cov") for k in range(n_controls)
                    ]
                    for direction, ct in dirs:
                        mf = 0.9 - 0.3 * layer if ct == "v_rev" else float(rng.normal(0, 0.05))
                        rows.append({
                            "run": run, "step": step, "layer": layer, "kind": kind, "direction": direction,
                            "control_type": ct, "alpha": np.nan, "metric": 2.0 - mf, "metric_clean": 2.0,
                            "metric_aligned": 0.0, "effect": 2.0 * mf, "mediation_fraction": mf,
                        })  # fmt: skip
        for layer in LAYERS:
            for alpha in (0.0, 1.0, 2.0, 4.0):
                dirs = [("v_rev", "v_rev")] + [
                    (f"random_iso_{k}", "iso") for k in range(n_controls)
                ]
                for direction, ct in dirs:
                    m = alpha * 0.5 if ct == "v_rev" else float(rng.normal(0, 0.1))
                    rows.append({
                        "run": run, "step": 0, "layer": layer, "kind": "steer", "direction": direction,
                        "control_type": ct, "alpha": alpha, "metric": m, "metric_clean": 0.0,
                        "metric_aligned": 0.0, "effect": m, "mediation_fraction": np.nan,
                    })  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def drift() -> pd.DataFrame:
    return make_drift()


@pytest.fixture(scope="session")
def directions() -> pd.DataFrame:
    return make_directions()


@pytest.fixture(scope="session")
def effects() -> pd.DataFrame:
    return make_effects()
