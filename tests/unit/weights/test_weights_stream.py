"""weight_reversion on a planted history: it recovers c from ΔW = −c·V + noise, a control from base
shows no reversion, a LoRA adapter (factor identities) equals its merged full checkpoint, and bad
input fails before any arithmetic."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from unit.weights.planted import C_LORA, RANK, SIGMA, C

import revlens
from revlens.errors import CheckpointError, ConfigError, HistoryError
from revlens.weights import WeightReport, weight_reversion


def _model_row(report, run, step, k=1):
    m = report.model
    return m[(m["run"] == run) & (m["step"] == step) & (m["k"] == k)].iloc[0]


def test_planted_reversion_recovers_c_at_model_and_module_level(planted_report, planted):
    v_norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in planted["v"].values()))
    for step, c in enumerate(C, start=1):
        row = _model_row(planted_report, "planted", step)
        # revert = c − σ⟨E, V⟩/‖V‖²: the noise term has sd σ/‖V‖ per element scale (here ≈ 0.006)
        assert abs(row["revert"] - c) < 5 * SIGMA / v_norm, (step, row["revert"])
        assert row["cos"] > row["null_iso_p99"] and row["p_iso"] < 1e-6
    mods = planted_report.table.drop_duplicates(["run", "step", "module"])
    planted_mods = mods[(mods["run"] == "planted") & (mods["step"] == 3)]
    tol = 5 * SIGMA / planted_mods["v_norm"]
    assert ((planted_mods["revert"] - C[2]).abs() < tol).all(), planted_mods[["module", "revert"]]


def test_control_from_base_shows_no_reversion(planted_report):
    row = _model_row(planted_report, "control", 1)
    assert row["kind"] == "control"
    # pure noise from base: cos within the exact isotropic null (2x its p99 is a ~1e-5 event)
    assert abs(row["cos"]) < 2 * row["null_iso_p99"]
    assert abs(row["revert"]) < 2 * row["revert_null_p99"]
    lay = planted_report.layers[(planted_report.layers["run"] == "control")]
    assert (lay["cos"].abs() < 2.5 * lay["null_iso_p99"]).all()


def test_lora_factor_identities_equal_the_merged_full_checkpoint(planted_report):
    t = planted_report.table
    cols = [
        "cos",
        "revert",
        "dw_norm",
        "frac_left",
        "frac_right",
        "frac_both",
        "rand_left_mean",
        "rand_right_p99",
        "rand_both_mean",
    ]
    a = t[t["run"] == "lora"].set_index(["module", "k"])[cols]
    b = t[t["run"] == "merged"].set_index(["module", "k"])[cols]
    touched = a["dw_norm"] > 0
    assert touched.sum() >= 4 * 2  # c_attn and c_fc of both blocks, at each k
    # merged weights are rounded to float32 once (W + δ), hence the tolerance
    np.testing.assert_allclose(
        a[touched].to_numpy(), b.loc[a[touched].index].to_numpy(), rtol=2e-4, atol=1e-6
    )
    assert (
        b[~touched]["dw_norm"] == 0
    ).all()  # merge_and_unload leaves the other weights bit-identical


def test_lora_planted_exactly_minus_c_times_the_rank_r_truncation(planted_report):
    t = planted_report.table
    row = t[
        (t["run"] == "lora") & (t["module"] == "transformer.h.0.attn.c_attn.weight") & (t["k"] == 4)
    ].iloc[0]
    # ΔW = −c·V_r: revert = c·‖V_r‖²/‖V‖² = c·(V's energy in its top-r); cos = ‖V_r‖/‖V‖; all of ΔW lies
    # in V's top-r subspaces (left, right and both). Tolerance: the factors and V went through float32 files.
    assert row["revert"] == pytest.approx(C_LORA * row["v_energy"], rel=1e-6)
    assert row["cos"] == pytest.approx(math.sqrt(row["v_energy"]), rel=1e-6)
    for side in ("left", "right", "both"):
        assert row[f"frac_{side}"] == pytest.approx(1.0, abs=1e-6)
        assert row[f"p_rand_{side}"] == pytest.approx(1 / 65)
    assert RANK == 4


def test_subspace_nulls_and_columns(planted_report):
    t = planted_report.table
    assert set(t["k"].unique()) == {0, 1, 4}
    assert {
        "run",
        "step",
        "layer",
        "module",
        "module_type",
        "group",
        "k",
        "cos",
        "revert",
        "frac_left",
        "iso_left_p99",
        "rand_left_p99",
        "p_rand_both",
        "chance_right",
    } <= set(t.columns)
    row = t[(t["module"] == "transformer.h.1.mlp.c_fc.weight") & (t["k"] == 4)].iloc[0]
    assert (
        row["shape"] == "128×32" and row["layer"] == 1 and row["module_type"] == "mlp.c_fc.weight"
    )
    assert row["chance_left"] == 4 / 128 and row["chance_both"] == 16 / (128 * 32)
    assert row["group"] == "mlp"
    vec = t[t["module"] == "transformer.h.0.ln_1.weight"]
    assert vec["k"].tolist() == [0] * len(vec) and vec["frac_left"].isna().all()
    assert t[t["module"] == "transformer.wte.weight"]["layer"].eq(-1).all()
    assert "lm_head.weight" not in set(t["module"])  # tied to wte: read once
    # a noise update has no preference for V's subspaces: within the random-subspace null
    ctrl = t[(t["run"] == "control") & (t["k"] == 4)]
    assert (ctrl["p_rand_left"] > 0.01).mean() > 0.8


def test_model_rows_are_exact_sums_of_modules(planted_report):
    t = planted_report.table.drop_duplicates(["run", "step", "module"])
    part = t[(t["run"] == "planted") & (t["step"] == 2)]
    row = _model_row(planted_report, "planted", 2)
    v2 = float((part["v_norm"] ** 2).sum())
    assert row["revert"] == pytest.approx(-part["dot"].sum() / v2, rel=1e-12)
    assert row["numel"] == part["numel"].sum()
    lay = planted_report.layers
    assert sorted(lay["layer"].unique()) == [-1, 0, 1]


def test_save_load_roundtrip_and_revlens_load(planted_report, tmp_path):
    planted_report.save(tmp_path / "w")
    back = revlens.load(tmp_path / "w")
    assert isinstance(back, WeightReport)
    for attr in ("table", "layers", "model", "spectrum"):
        pd.testing.assert_frame_equal(
            getattr(back, attr), getattr(planted_report, attr), check_exact=True
        )
    assert back.config == planted_report.config
    (tmp_path / "w" / "modules.json").write_text("{}")
    with pytest.raises(ConfigError, match="changed"):
        revlens.load(tmp_path / "w")


def test_headline_summary_and_repr(planted_report):
    h = planted_report.headline(k=4)
    assert set(h["groups"]) == {"runs", "control"}
    assert h["groups"]["control"]["above_iso_p99"]["count"] == 0
    s = planted_report.summary()
    assert list(s.columns) == ["quantity", "runs", "control"] and len(s) == 8
    assert "WeightReport(" in repr(planted_report)
    with pytest.raises(ConfigError, match="k=3"):
        planted_report.headline(k=3)


def test_float32_arithmetic_agrees_with_float64(planted_history):
    kw = {
        "ks": (2,),
        "n_random": 0,
        "params": r"c_fc\.weight",
        "runs": ("planted",),
        "progress": False,
    }
    full = weight_reversion(planted_history, **kw).table
    low = weight_reversion(planted_history, dtype="float32", **kw).table
    np.testing.assert_allclose(low["frac_left"], full["frac_left"], rtol=1e-4)
    np.testing.assert_allclose(low["revert"], full["revert"], rtol=1e-4)


def test_bad_inputs_fail_before_arithmetic(planted, planted_history, tmp_path):
    with pytest.raises(ConfigError, match="no parameter"):
        weight_reversion(planted_history, params="nothing-matches", progress=False)
    with pytest.raises(HistoryError, match="nope"):
        weight_reversion(planted_history, runs=("nope",), progress=False)
    with pytest.raises(ConfigError, match="ks"):
        weight_reversion(planted_history, ks=(), progress=False)
    with pytest.raises(ConfigError, match="unknown setting"):
        weight_reversion(planted_history, k=3, progress=False)
    adapter_as_aligned = revlens.History.from_state_dicts(
        planted["base"],
        base=planted["base"],
        aligned=planted["runs"]["lora"][1],
        runs={"r": {1: planted["runs"]["planted"][1]}},
    )
    with pytest.raises(ConfigError, match="adapter"):
        weight_reversion(adapter_as_aligned, progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError):
        h = revlens.History.from_state_dicts(
            planted["base"], base=planted["base"], aligned=planted["aligned"], runs={"r": {1: bad}}
        )
        weight_reversion(h, progress=False)


def test_in_memory_state_dicts_are_read_too(planted):
    import tiny

    base = tiny.tiny_model(0)
    aligned = {k: v.clone() for k, v in base.state_dict().items()}
    aligned["transformer.h.0.mlp.c_fc.weight"] += 0.1
    step = {k: v.clone() for k, v in aligned.items()}
    step["transformer.h.0.mlp.c_fc.weight"] -= 0.05
    h = revlens.History.from_state_dicts(
        planted["base"], base=base.state_dict(), aligned=aligned, runs={"r": {1: step, 2: step}}
    )
    rep = weight_reversion(h, params="h.0.mlp.c_fc.weight", ks=(1,), n_random=0, progress=False)
    assert rep.model["revert"].tolist() == pytest.approx([0.5, 0.5])
    assert torch.get_num_threads() >= 1


def test_a_nan_in_a_checkpoint_is_named(planted, tmp_path):
    from safetensors.torch import load_file, save_file

    import tiny
    from revlens.errors import NonFiniteError

    sd = load_file(str(planted["runs"]["planted"][2] / "model.safetensors"))
    sd["transformer.h.1.mlp.c_proj.weight"][3, 4] = float("nan")
    bad = tmp_path / "nan"
    bad.mkdir()
    save_file(sd, str(bad / "model.safetensors"), metadata={"format": "pt"})
    tiny.tiny_config().save_pretrained(bad)
    h = revlens.History.from_dirs(
        base=planted["base"], aligned=planted["aligned"], runs={"r": {1: bad, 2: bad}}
    )
    with pytest.raises(NonFiniteError, match=r"r/step-1.*h\.1\.mlp\.c_proj\.weight"):
        weight_reversion(h, n_random=0, progress=False)


def test_read_buffers_are_reused_only_when_copied_out(planted_history):
    from revlens.weights.readers import BufferPool

    pool = BufferPool()
    a = pool.take((3, 4), torch.float32)
    pool.release(a)
    assert pool.take((3, 4), torch.float32) is a  # reused
    b = pool.take((3, 4), torch.float32)
    assert b is not a
    pool.release(b, reuse=False)  # the caller kept it (no copy was made): never handed out again
    assert pool.take((3, 4), torch.float32) is not b
    # float32 arithmetic on float32 files makes no copy: the results must equal float64's all the same
    kw = {"ks": (1,), "n_random": 0, "runs": ("planted",), "progress": False}
    f32 = weight_reversion(planted_history, dtype="float32", **kw).model
    f64 = weight_reversion(planted_history, **kw).model
    np.testing.assert_allclose(f32["revert"], f64["revert"], rtol=1e-4)


def test_read_ahead_thread_gives_the_same_table(planted_history):
    kw = {"ks": (1,), "n_random": 4, "runs": ("planted", "lora"), "progress": False}
    a = weight_reversion(planted_history, prefetch=0, **kw).table
    b = weight_reversion(planted_history, prefetch=3, **kw).table
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_config_fields_are_spelled_out_and_an_unknown_keyword_is_named(planted_history):
    import inspect

    params = inspect.signature(weight_reversion).parameters
    assert {"ks", "n_random", "params", "layers", "runs", "svd", "seed"} <= set(params)
    assert "settings" not in params  # the config convention: spelled-out fields (as analyze)
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['k'\]"):
        weight_reversion(planted_history, k=3, progress=False)
