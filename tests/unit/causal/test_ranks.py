"""ablation_study over subspace ranks k: rank-1 rows equal a one-direction study, full-rank patching
mediates everything, the held-out split is a partition, k is chosen on the selection half."""

import plotly.graph_objects as go
import pytest
import torch

import revlens
from revlens.causal import CausalReport, ablation_study, logit_diff, patch
from revlens.directions import Directions
from revlens.errors import ConfigError
from revlens.sites import access


@pytest.fixture(scope="module")
def metric():
    return logit_diff(["w1", "w2"], ["w3"])


@pytest.fixture(scope="module")
def frames(lm):
    """A rank-32 basis (all of R^d) per layer, its rows in a random order (fixed seed)."""
    q = torch.linalg.qr(
        torch.randn(32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )[0]
    return Directions.from_tensor(q.T[None].expand(2, 32, 32).clone(), [1, 2], method="frame")


@pytest.fixture(scope="module")
def study(tiny_history, lm, prompts_module, metric, ref_stats, frames):
    return ablation_study(
        tiny_history,
        prompts_module,
        metric,
        model=lm,
        stats=ref_stats,
        directions=frames,
        layers=[1, 2],
        runs=["seed0", "seed1"],
        steps="last",
        controls=3,
        ranks=(1, 2, 32),
        kinds=("clamp", "patch"),
        batch_size=4,
        progress=False,
    )


def test_rank_one_rows_equal_a_one_direction_study(
    tiny_history, lm, prompts_module, metric, ref_stats, frames, study
):
    one = ablation_study(
        tiny_history,
        prompts_module,
        metric,
        model=lm,
        stats=ref_stats,
        directions=frames,
        layers=[1, 2],
        runs=["seed0", "seed1"],
        steps="last",
        controls=3,
        kinds=("clamp", "patch"),
        batch_size=4,
        progress=False,
    )
    assert set(one.effects["rank"]) == {1} and set(one.effects["split"]) == {"all"}
    sub = study.effects.query("rank == 1 and split == 'all'").reset_index(drop=True)
    cols = ["run", "layer", "kind", "direction", "metric", "metric_clean", "mediation_fraction"]
    assert sub[cols].equals(one.effects[cols])
    assert torch.equal(
        study.controls[1][:, 0], one.controls[1]
    )  # the frames start with the same controls


def test_full_rank_subspaces_are_all_of_rd(tiny_history, lm, prompts_module, metric, study):
    """At k = d every frame (the subspace and each random control) spans R^d: patching it is
    full-vector activation patching, the same for all of them and equal to the context manager."""
    e = study.effects.query("rank == 32 and split == 'all'")
    assert (
        e.groupby(["run", "layer", "kind"])["metric"].agg(lambda m: m.max() - m.min()).max() < 1e-4
    )
    tok = revlens.Probes(prompts_module).tokenize(lm.tokenizer, n_ctx=lm.n_ctx)
    batch = next(tok.batches(len(tok)))
    lm.load(tiny_history.aligned)
    acc = access(lm)
    with torch.no_grad():
        _, acts = acc.capture(batch.tokens, acc.sites([2]))
        lm.load(tiny_history.runs["seed0"].steps[3])
        with patch(lm, torch.eye(32)[None], layers=[2], source_acts={2: acts[2]}):
            full = float(metric(acc.forward(batch.tokens), batch).mean())
    row = e.query("run == 'seed0' and layer == 2 and kind == 'patch' and direction == 'v_rev'")
    assert float(row["metric"].iloc[0]) == pytest.approx(full, abs=1e-4)
    # and the mediation depends on k (rank 1, 2 and 32 differ)
    mf = study.effects.query("kind == 'patch' and split == 'all' and control_type == 'v_rev'")
    assert mf.groupby("rank")["mediation_fraction"].mean().nunique() == 3


def test_held_out_split_is_a_seeded_partition(study):
    e = study.effects
    sel = study.config["select_prompts"]
    assert len(sel) == 3 and len(set(sel)) == 3  # half of 6 prompts, chosen before any forward pass
    n = e.groupby("split")["n_prompts"].first()
    assert n["select"] + n["test"] == n["all"] == 6
    piv = e.pivot_table(
        index=["run", "layer", "kind", "rank", "direction"], columns="split", values="metric"
    )
    weighted = (n["select"] * piv["select"] + n["test"] * piv["test"]) / n["all"]
    assert (weighted - piv["all"]).abs().max() < 1e-9


def test_rank_table_choice_figure_and_save(study, tmp_path):
    t = study.rank_table("patch")
    assert set(t["split"]) == {"select", "test", "all"} and set(t["rank"]) == {1, 2, 32}
    assert {"iso_mean", "iso_p05", "iso_p95", "cov_mean", "ctrl_p95", "margin", "n_runs"} <= set(
        t.columns
    )
    assert (t["n_runs"] == 2).all()
    ch = study.rank_choice("patch")
    assert (
        ch["held_out"]
        and ch["rule"] == "margin"
        and ch["rank"] in (1, 2, 32)
        and ch["layer"] in (1, 2)
    )
    sel = t[(t["split"] == "select")]
    assert ch["select"]["margin"] == pytest.approx(sel["margin"].max())
    test_row = t[
        (t["split"] == "test") & (t["layer"] == ch["layer"]) & (t["rank"] == ch["rank"])
    ].iloc[0]
    assert ch["test"]["mediation_mean"] == pytest.approx(test_row["mediation_mean"])
    fig = study.mediation_vs_k("patch")
    assert isinstance(fig, go.Figure) and any("chosen k" in (tr.name or "") for tr in fig.data)
    assert "chosen k=" in repr(study)
    assert isinstance(study.mediation_heatmap(), go.Figure)  # one-direction figures draw rank 1
    back = CausalReport.load(study.save(tmp_path / "causal"))
    assert back.equals(study) and back.controls[1].shape == (6, 32, 32)  # 3 iso + 3 cov 32-frames


def test_rank_bad_input(tiny_history, lm, prompts_module, metric, ref_stats):
    kw = dict(
        model=lm,
        stats=ref_stats,
        layers=[1],
        runs="seed0",
        steps="last",
        controls=1,
        progress=False,
    )
    with pytest.raises(ConfigError, match="need directions of rank >= 2"):
        ablation_study(
            tiny_history, prompts_module, metric, directions=torch.randn(1, 32), ranks=(1, 2), **kw
        )
    with pytest.raises(ConfigError, match="ranks must be >= 1"):
        ablation_study(tiny_history, prompts_module, metric, ranks=(0, 2), **kw)
    with pytest.raises(ConfigError, match="empty selection or test half"):
        ablation_study(
            tiny_history,
            prompts_module,
            metric,
            directions="pca",
            ranks=(1, 2),
            select_fraction=0.05,
            **kw,
        )
    with pytest.raises(ConfigError, match="rank_rule"):
        ablation_study(tiny_history, prompts_module, metric, ranks=(1, 2), rank_rule="best", **kw)
