"""The refusal direction as a registered estimator (``"refusal"``): fitted from labelled statistics,
equal to a hand computation of the harmful − harmless mean difference, picked up by name in
analyze (drift rows beside both nulls) and resolve_directions, refused with typed errors before any
forward pass."""

import warnings

import pytest
import torch
import transformers as tf

import revlens
import tiny
from revlens.analyze import DEFAULT_METHODS, AnalyzeConfig
from revlens.collect import collect
from revlens.directions import ESTIMATORS, RefusalDirection, refusal_directions, resolve_directions
from revlens.directions.refusal import REFUSAL_SIGN
from revlens.drift import compare_directions
from revlens.errors import ConfigError, HistoryError, ProbeError
from revlens.probes import Probes

LABELS = ["harmful", "harmful", "harmful", "harmless", "harmless", "harmless"]


def labelled(labels=LABELS):
    return Probes(list(tiny.PROMPTS), labels=labels)


@pytest.fixture(scope="module")
def stats(tiny_history):
    return collect(
        tiny_history,
        labelled(),
        keep="reference",
        moments="reference",
        n_bootstrap=0,
        progress=False,
    )


@torch.no_grad()
def hand_last_token(path, prompts):
    """HF ``output_hidden_states`` at each prompt's last token, ``[prompt, layer, d]`` (float64)."""
    model = tf.AutoModelForCausalLM.from_pretrained(path).eval()
    tok = tiny.tiny_tokenizer()
    rows = []
    for p in prompts:
        ids = tok(p, return_tensors="pt")["input_ids"]
        hs = model(ids, output_hidden_states=True).hidden_states[
            :-1
        ]  # the last one has ln_f applied
        rows.append(torch.stack([h[0, -1] for h in hs]).double())
    return torch.stack(rows)


@pytest.mark.parametrize("checkpoint", ["aligned", "base"])
def test_equals_the_hand_computed_mean_difference(tiny_history, stats, checkpoint):
    est = RefusalDirection(checkpoint=checkpoint, n_bootstrap=8).fit(stats)
    x = hand_last_token(tiny_history[checkpoint].local_path(), tiny.PROMPTS)
    diff = x[:3].mean(0) - x[3:].mean(0)  # [n_layers, d] at revlens layers 0..n-1
    r = est.direction_
    assert (
        r.method == "refusal" and list(r.layers) == stats.layers and r.meta["sign"] == REFUSAL_SIGN
    )
    assert r.meta["checkpoint_read"] == checkpoint and (
        r.meta["n_harmful"],
        r.meta["n_harmless"],
    ) == (3, 3)
    for layer in range(len(diff)):
        assert torch.allclose(r[layer].double(), diff[layer] / diff[layer].norm(), atol=1e-5), layer
        assert r.meta["norm"][layer] == pytest.approx(float(diff[layer].norm()), rel=1e-4)
    assert ((est.stability_ > 0) & (est.stability_ <= 1)).all()
    # the same as the one-checkpoint function (its own forward passes) at the same position
    fn = refusal_directions(tiny_history, labelled(), position="last", checkpoint=checkpoint)[
        "last"
    ]
    assert torch.allclose(fn.basis, r.basis, atol=1e-5)


def test_registered_by_name_and_not_a_default(stats):
    assert ESTIMATORS["refusal"] is RefusalDirection
    assert "refusal" not in DEFAULT_METHODS and set(DEFAULT_METHODS) == {
        "mean_diff",
        "pca",
        "probe",
        "whitened",
    }
    by_name = resolve_directions("refusal", stats, layers=[1, 2])
    assert list(by_name.layers) == [1, 2]
    assert torch.equal(
        by_name.basis, RefusalDirection(n_bootstrap=0).fit(stats).direction_.select([1, 2]).basis
    )
    flipped = (
        RefusalDirection(harmful="harmless", harmless="harmful", n_bootstrap=0)
        .fit(stats)
        .direction_
    )
    assert torch.allclose(
        flipped.basis, -resolve_directions("refusal", stats).basis, atol=1e-6
    )  # sign: harmful


def test_analyze_takes_it_by_name_with_both_nulls(tiny_history, tiny_lm, stats, tmp_path):
    report = revlens.analyze(
        tiny_lm,
        tiny_history,
        labelled(),
        methods=["mean_diff", "refusal"],
        n_null=40,
        n_stability=4,
        n_bootstrap=0,
        progress=False,
    )
    assert set(report.directions) == {"mean_diff", "refusal"}
    rows = report.drift[report.drift["method"] == "refusal"]
    assert len(rows) == 2 * 3 * 3  # runs × steps × layers
    assert rows[["null_iso_p99", "null_cov_p99", "p_iso", "p_cov"]].notna().all().all()
    r = report.directions["refusal"]
    for _, row in rows.iterrows():
        d = stats.mean(f"{row['run']}/step-{int(row['step'])}") - stats.mean("aligned")
        d = d[stats.layer_pos(int(row["layer"]))]
        assert row["cos"] == pytest.approx(
            float(d @ r[int(row["layer"])].double() / d.norm()), abs=1e-6
        )
    table = report.directions_table
    assert set(table["method"]) == {"mean_diff", "refusal"} and table["stability"].notna().all()
    back = revlens.load(report.save(tmp_path / "report"))
    assert torch.equal(back.directions["refusal"].basis, r.basis)
    # cos(v_rev, r) per layer beside its isotropic and covariance-matched nulls
    cmp = compare_directions(report.directions["mean_diff"], r, stats=stats, n_null=100)
    v = report.directions["mean_diff"]
    assert [round(c, 6) for c in cmp.table["cos"]] == [
        round(float(v[x] @ r[x]), 6) for x in stats.layers
    ]
    assert cmp.table[["iso_p", "cov_p"]].notna().all().all()


class _Count:
    def __init__(self, lm):
        self.n = 0
        self.handle = lm.hf_model.register_forward_pre_hook(self)

    def __call__(self, *args):
        self.n += 1


def test_typed_errors_before_any_forward(tiny_history, tiny_lm, stats):
    from revlens.causal import ablation_study, logit_diff

    count = _Count(tiny_lm)
    kw = {"n_null": 5, "n_bootstrap": 0, "progress": False}
    try:
        with pytest.raises(ProbeError, match="labelled probes"):
            revlens.analyze(tiny_lm, tiny_history, list(tiny.PROMPTS), methods=["refusal"], **kw)
        with pytest.raises(ProbeError, match="no probe is labelled 'harmless'"):
            revlens.analyze(
                tiny_lm,
                tiny_history,
                labelled(["harmful"] * 6),
                methods=["mean_diff", "refusal"],
                **kw,
            )
        with pytest.raises(HistoryError, match="no checkpoint 'nope'"):
            revlens.analyze(
                tiny_lm,
                tiny_history,
                labelled(),
                methods=[RefusalDirection(checkpoint="nope")],
                **kw,
            )
        with pytest.raises(ConfigError, match="fine-tuning step"):
            revlens.analyze(
                tiny_lm,
                tiny_history,
                labelled(),
                methods=[RefusalDirection(checkpoint="seed0/step-1")],
                **kw,
            )
        with pytest.raises(ConfigError, match="n_components must be 1"):
            revlens.analyze(
                tiny_lm, tiny_history, labelled(), methods=[RefusalDirection(n_components=2)], **kw
            )
        with pytest.raises(ConfigError, match="same label"):
            revlens.analyze(
                tiny_lm,
                tiny_history,
                labelled(),
                methods=[RefusalDirection(harmless="harmful")],
                **kw,
            )
        with pytest.raises(ConfigError, match="at most 1 direction"):
            AnalyzeConfig(ranks=(2,), subspace_methods=("refusal",))
        with pytest.raises(ProbeError, match="harmless"):
            ablation_study(
                tiny_history,
                labelled(["harmful"] * 6),
                logit_diff(["w1"], ["w2"]),
                model=tiny_lm,
                directions="refusal",
                layers=[1],
                steps=[1],
                controls=1,
                progress=False,
            )
        assert count.n == 0
    finally:
        count.handle.remove()
    # statistics that cannot give it (fit reads no model)
    with pytest.raises(ProbeError, match="labelled probes"):
        RefusalDirection().fit(
            collect(
                tiny_history, list(tiny.PROMPTS), keep="reference", n_bootstrap=0, progress=False
            )
        )
    with pytest.raises(ConfigError, match="per-prompt activations"):
        RefusalDirection(checkpoint="seed0/step-2").fit(stats)
    with pytest.raises(ConfigError, match="expects HistoryStats"):
        RefusalDirection().fit({"not": "stats"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match="valid methods"):
            revlens.analyze(tiny_lm, tiny_history, labelled(), methods=["refusl"], **kw)
