"""ablation_study along the refusal direction by name (``directions="refusal"``): the batched sweep
and the sequential runner agree, with the same random controls as v_rev."""

import torch

import tiny
from revlens.causal import ablation_study, logit_diff
from revlens.directions import RefusalDirection
from revlens.metrics import ModelMetric, call_metric
from revlens.probes import Probes
from revlens.sites import access

LABELS = ["harmful", "harmful", "harmful", "harmless", "harmless", "harmless"]


class Forwarded(ModelMetric):
    """A model metric (one intervention per pass: the sequential runner) reading the same logits."""

    name = "forwarded"

    def __init__(self, metric):
        super().__init__()
        self.metric = metric

    def bind(self, tokenizer, vocab_size=None):
        self.metric.bind(tokenizer, vocab_size=vocab_size)
        return super().bind(tokenizer, vocab_size)

    def score(self, model, batch):
        return call_metric(self.metric, access(model).forward(batch.tokens), batch)


def test_refusal_by_name_batched_and_sequential_agree_with_the_same_controls(tiny_history, lm):
    probes = Probes(list(tiny.PROMPTS), labels=LABELS)
    kw = {
        "model": lm,
        "layers": [1, 2],
        "runs": ["seed0"],
        "steps": [3],
        "controls": 2,
        "batch_size": 4,
        "progress": False,
        "kinds": ("clamp", "patch", "steer"),
        "alphas": [0.5],
    }
    metric = logit_diff(["w1", "w2"], ["w3"])
    along_r = ablation_study(tiny_history, probes, metric, directions="refusal", **kw)
    sequential = ablation_study(
        tiny_history,
        probes,
        Forwarded(logit_diff(["w1", "w2"], ["w3"])),
        directions="refusal",
        **kw,
    )
    along_v = ablation_study(tiny_history, probes, metric, directions="mean_diff", **kw)
    b, s, v = along_r.effects, sequential.effects, along_v.effects
    assert along_r.directions.method == "refusal" and along_r.config["directions"] == "refusal"
    assert (
        len(b) == len(s) == len(v) == 2 * 3 * 5
    )  # layers × (clamp, patch, one alpha) × (r + 2 iso + 2 cov)
    assert list(b["direction"]) == list(s["direction"])
    torch.testing.assert_close(
        torch.tensor(b["metric"].to_numpy()),
        torch.tensor(s["metric"].to_numpy()),
        rtol=1e-5,
        atol=1e-5,
    )
    # r is the refusal estimator on the aligned checkpoint's per-prompt activations of these probes
    want = RefusalDirection(n_bootstrap=0).fit(_stats(tiny_history, probes, lm))
    assert torch.allclose(along_r.directions.basis, want.direction_.select([1, 2]).basis, atol=1e-6)
    # the same random controls for both directions (same seed): their rows are equal
    ctrl = b["direction"] != "v_rev"
    torch.testing.assert_close(
        torch.tensor(b[ctrl]["metric"].to_numpy()), torch.tensor(v[ctrl]["metric"].to_numpy())
    )
    r_rows, v_rows = b[~ctrl], v[~ctrl]
    assert (r_rows["effect"] - v_rows["effect"].to_numpy()).abs().max() > 1e-6  # but r is not v_rev


def _stats(hist, probes, lm):
    from revlens.collect import collect

    return collect(
        hist.restricted(),
        probes,
        model=lm,
        layers=[1, 2],
        keep="reference",
        n_bootstrap=0,
        progress=False,
    )
