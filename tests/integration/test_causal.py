"""Causal studies end to end on a tiny real history, checked against an independent oracle.

Oracle (DESIGN §4): ``transformer_lens.patching.get_act_patch_resid_pre`` patches the full
residual stream entering each block at each position from a source cache. revlens's ``patch``
with the full basis (``Q = I``) at one position must give the same metric.
"""

import pytest
import torch
from transformer_lens import patching

import revlens
from revlens.causal import ablation_study, logit_diff, patch
from revlens.sites import access, resolve_sites


@pytest.fixture(scope="module")
def lm(tiny_history):
    return tiny_history.boot()


def test_full_vector_patch_matches_transformer_lens(tiny_history, lm, prompts):
    bridge = lm.bridge
    batch = next(revlens.Probes(prompts[:3]).tokenize(lm.tokenizer, n_ctx=lm.n_ctx).batches(3))
    tokens = batch.tokens
    metric = logit_diff(["w1"], ["w2"], tokenizer=lm.tokenizer)

    def scalar(logits):
        return metric(logits, batch).mean()

    sites = resolve_sites(bridge, "all", "resid_pre")
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(tokens)  # aligned weights: the source run
        _, aligned_acts = access(bridge).capture(tokens, sites)
        run_ck = tiny_history.runs["seed0"].steps[3]
        lm.load_weights(run_ck.state_dict(), name=run_ck.name)  # the fine-tuned run is patched
        oracle = patching.get_act_patch_resid_pre(bridge, tokens, clean_cache, scalar)
        ours = torch.zeros_like(oracle)
        eye = torch.eye(lm.d_model)[None]
        for s in sites:
            for pos in range(tokens.shape[1]):
                mask = torch.zeros(tokens.shape, dtype=torch.bool)
                mask[:, pos] = True
                with patch(
                    lm,
                    eye,
                    [s.layer],
                    {s.layer: aligned_acts[s.layer]},
                    positions=mask,
                    site="resid_pre",
                ):
                    ours[s.layer, pos] = scalar(bridge(tokens))
        unpatched = scalar(bridge(tokens))
    assert oracle.shape == (lm.n_layers, tokens.shape[1])
    assert torch.allclose(ours, oracle, atol=1e-5), (ours, oracle)
    assert float((oracle - unpatched).abs().max()) > 1e-3  # the patches matter


def test_study_round_trip_and_figures(tiny_history, lm, prompts, tmp_path):
    rep = ablation_study(
        tiny_history,
        prompts,
        logit_diff(["w1", "w2"], ["w3"]),
        model=lm,
        layers="all",
        steps="last",
        controls=3,
        kinds=("clamp", "patch", "steer"),
        alphas=[0.0, 1.0, 2.0],
        progress=False,
    )
    assert set(rep.effects["run"]) == {"seed0", "seed1", "aligned"}
    assert len(rep.summary()) == 2 * 3 * 2 + 3 * 3
    back = revlens.causal.CausalReport.load(rep.save(tmp_path / "causal"))
    assert back.equals(rep)
    # figures and HTML are rendered by revlens.plot / revlens.report (lazy imports)
    import plotly.graph_objects as go

    assert isinstance(back.mediation_heatmap(), go.Figure)
    assert isinstance(back.control_bands(intervention="patch"), go.Figure)
    assert isinstance(back.steer_dose_response(), go.Figure)
    out = back.to_html(tmp_path / "causal.html")
    assert "v_rev" in out.read_text()
