"""Every model family researchers fine-tune, through every stage (issue 15's matrix).

Per family (tiny random models of :mod:`families`: 2 layers, d_model 64; one history per family
per session, built once and shared by the tests of that family, which run on one xdist worker):

- a history of ``save_pretrained`` base / aligned dirs and a Trainer run of ``checkpoint-N``
  folders (the same dirs read as ``step-N`` dirs give the same history, by content);
- ``analyze`` (chat-templated probes: layer 0 is degenerate on families without learned
  positions, reported and left out) → HTML report → ``ablation_study`` (clamp + patch + steer,
  16 iso + 16 cov controls) whose v_rev effects equal the ``loop`` strategy's;
- after swaps, logits equal a fresh boot of the same checkpoint (≤ 1e-6, fp32);
- ``ReversionBlocker(method="update")`` for a few steps on the plain Hugging Face model (s held
  near 0 where the unblocked run moves), ``ReversionMonitor`` on the same run;
- bf16 collection close to fp32 (OLMo 2: ``UpstreamError``, a TransformerLens bug);
- every site kind: the Hugging Face path reads what the bridge reads, ``grow`` equals ``loop``,
  and one extra site kind per family through analyze / ablation / monitor / blocker (``SiteError``
  for ``resid_mid`` on parallel-attention families).
"""

import functools
import math
import warnings
from pathlib import Path

import pytest
import torch

import families
import revlens
from revlens.causal.batched import Stack, run_stacks
from revlens.collect import DegenerateLayerWarning
from revlens.errors import SiteError, UpstreamError
from revlens.metrics import logit_diff
from revlens.sites import access
from revlens.sites.hf import HFAccess

MATRIX = families.FAMILIES
PARALLEL = {
    "phi",
    "gpt_neox",
    "gptj",
    "falcon",
}  # attention and MLP on the same input: no resid_mid
HALF_PRECISION_BUG = {"olmo2"}  # TransformerLens 4.3 (revlens.loading.boot._UPSTREAM_DTYPE_BUGS)
_EXTRA_SITES = ("resid_mid", "attn_out", "mlp_out", "resid_pre", "ln_final")
PROMPTS = [f"w{i} w{i + 3} w{i + 7}" + " w40" * (i % 3) for i in range(10, 18)]


def _extra_site(family: str) -> str:
    return (
        "resid_mid"
        if family in PARALLEL
        else _EXTRA_SITES[MATRIX.index(family) % len(_EXTRA_SITES)]
    )


def _groups(family: str):
    return pytest.param(family, marks=pytest.mark.xdist_group(f"family-{family}"), id=family)


FAMILY = pytest.mark.parametrize("family", [_groups(f) for f in MATRIX])


@functools.cache
def _root() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="revlens-matrix-"))


class Fam:
    """One family's history, booted model and analysis (built once per session)."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.dirs = families.write_history(
            _root() / family, family, n_runs=1, steps=(1, 2), trainer=True
        )
        # the tokenizer object (transformers 5 re-reads the saved word-level tokenizer of some
        # families, e.g. Qwen2, as their own BPE class, which drops every word)
        tok = families.tokenizer()
        self.hist = revlens.History.from_trainer_output(
            base=self.dirs["base"],
            aligned=self.dirs["aligned"],
            runs=self.dirs["runs"],
            tokenizer=tok,
        )
        self.probes = [
            tok.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
            for p in PROMPTS
        ]
        self.metric = logit_diff(["w1"], ["w2"])
        self.lm = self.hist.boot()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DegenerateLayerWarning)
            self.report = revlens.analyze(
                self.hist,
                self.probes,
                model=self.lm,
                n_null=50,
                n_bootstrap=10,
                n_stability=0,
                progress=False,
            )
        self.degenerate = [w for w in caught if issubclass(w.category, DegenerateLayerWarning)]
        self.v = self.report.directions["mean_diff"]
        self.ref_stats = revlens.collect(
            self.hist.restricted(),
            self.probes,
            model=self.lm,
            layers=list(self.v.layers),
            n_bootstrap=0,
            progress=False,
        )


@functools.cache
def fam(family: str) -> Fam:
    return Fam(family)


def hf_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager").eval()


# ---------------------------------------------------------------------------------------- pipeline
@FAMILY
def test_history_analyze_report_and_degenerate_layers(family, tmp_path):
    f = fam(family)
    h = f.hist
    assert [c.name for c in h] == ["base", "aligned", "seed0/step-1", "seed0/step-2"]
    steps = {s: f.dirs["runs"]["seed0"] / f"checkpoint-{s}" for s in (1, 2)}
    same = revlens.History.from_dirs(
        base=f.dirs["base"],
        aligned=f.dirs["aligned"],
        runs={"seed0": steps},
        tokenizer=families.tokenizer(),
    )
    assert same.identity() == h.identity()
    rep = f.report
    assert set(rep.directions) == {"mean_diff", "pca", "probe", "whitened"}
    drift = rep.drift
    assert drift["cos"].notna().all() and (drift["cos"].abs() <= 1 + 1e-9).all()
    skipped = rep.config["degenerate_layers"]
    assert skipped in ([], [0])  # only the embedding layer can be constant at a fixed chat suffix
    assert sorted(rep.config["layers"]) == sorted(set(range(3)) - set(skipped))
    assert bool(skipped) == bool(f.degenerate) and (
        not skipped or "layer(s) [0]" in str(f.degenerate[0].message)
    )
    html = rep.to_html(tmp_path / "report.html")
    assert html.stat().st_size > 10_000


@FAMILY
def test_ablation_defaults_and_grow_equals_loop(family):
    f = fam(family)
    study = revlens.ablation_study(
        f.hist,
        f.probes,
        f.metric,
        model=f.lm,
        kinds=("clamp", "patch", "steer"),
        alphas=(2.0,),
        progress=False,
    )
    eff = study.effects
    layers = sorted(
        int(x) for x in eff.layer.unique()
    )  # the defaults: the layers that moved furthest
    assert set(layers) <= set(f.v.layers) and len(layers) == min(
        revlens.AblationConfig().auto_layers, len(f.v.layers)
    )
    assert set(eff.kind) == {"clamp", "patch", "steer"} and eff.metric.notna().all()
    assert set(eff.control_type) == {"v_rev", "iso", "cov"}
    steps = sorted(int(x) for x in eff[eff.kind == "clamp"].step.unique())
    loop = revlens.ablation_study(
        f.hist,
        f.probes,
        f.metric,
        model=f.lm,
        kinds=("clamp", "patch", "steer"),
        alphas=(2.0,),
        controls=1,
        control_kinds=("iso",),
        strategy="loop",
        progress=False,
        layers=layers,
        steps=steps,
    )
    key = ["run", "step", "layer", "kind", "alpha"]

    def v_rev(df):
        return df[df.direction == "v_rev"].sort_values(key).reset_index(drop=True)

    a, b = v_rev(eff), v_rev(loop.effects)
    n_ck = len(a[a.kind == "clamp"][["run", "step"]].drop_duplicates())
    assert n_ck >= 2 and len(a) == len(b) == len(layers) * (
        2 * n_ck + 1
    )  # checkpoints × clamp/patch + steer
    assert (a.metric - b.metric).abs().max() <= 1e-5 * max(1.0, float(a.metric.abs().max()))


@FAMILY
def test_swaps_give_a_fresh_boots_logits(family):
    f = fam(family)
    x = families.token_batch()
    for ck in (f.hist["seed0/step-2"], f.hist.aligned):
        f.lm.load(ck)
        fresh = revlens.LensModel.boot(
            ck.local_path(), tokenizer=families.tokenizer(), low_memory=False
        )
        diff = (families.logits(f.lm.bridge, x) - families.logits(fresh.bridge, x)).abs().max()
        assert float(diff) <= 1e-6, (ck.name, float(diff))
    assert f.lm.holds(f.hist.aligned.model_fingerprint())


# ---------------------------------------------------------------------------------------- training
def _train(model, blocker=None, monitor=None, steps: int = 3, lr: float = 0.01):
    """A few SGD steps on random sequences. Dropout (GPT-2, OPT, Bloom... train with it) draws
    from a seeded generator of its own, so every run, machine and test order sees the same masks;
    the blocked and the free run the same ones."""
    g = torch.Generator().manual_seed(0)
    data = torch.randint(len(families.SPECIALS) + 4, len(families.VOCAB), (4, 8), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    ctx = blocker.attached(model, opt) if blocker is not None else _null()
    with torch.random.fork_rng(devices=[]), ctx:
        torch.manual_seed(0)
        for step in range(1, steps + 1):
            loss = model(input_ids=data, labels=data).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            if monitor is not None:
                monitor.step(model, step)
    return model.eval()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@FAMILY
def test_blocker_update_and_monitor_on_the_hf_model(family):
    f = fam(family)
    aligned = f.dirs["aligned"]
    f.lm.load(f.hist.aligned)  # a model as the reference: read once into statistics
    blocker = revlens.ReversionBlocker(
        f.v,
        f.probes,
        f.lm,
        tokenizer=families.tokenizer(),
        method="update",
        refresh_every=1,
        probe_batch_size=None,
    )
    # a save_pretrained dir as the reference: read once through a plain HF model, then dropped
    mon = revlens.ReversionMonitor(f.v, f.probes, aligned, tokenizer=families.tokenizer(), every=1)
    blocked = _train(hf_model(aligned), blocker, mon)
    free = _train(hf_model(aligned))
    s_blocked, s_free = blocker.projection(blocked), blocker.projection(free)
    assert float(s_free.norm()) > 1e-3, s_free  # the unblocked run does move along v
    assert float(s_blocked.norm()) < float(s_free.norm()), (s_blocked, s_free)
    # What the update method guarantees is first order: each step's change along v is cancelled
    # to first order in the step, so the blocked motion is O(lr²) while the free motion is O(lr).
    # A fixed ratio (blocked < 0.2 × free at lr 0.01) depends on the family's curvature and failed
    # on OPT (0.22); the guarantee is the order: at a quarter of the step size the blocked run
    # moves ~16× less (order 2), the free run ~4× less (order 1). Measured on every family
    # (2026-12-07, 1 thread): blocked orders 1.46-2.3 (olmo2 lowest), free 0.58-1.30; the blocked
    # order must exceed the free one by half an order. Below the float32 resolution of the
    # projection (4 eps × the activations' norm) a drift is zero: Bloom's blocked run stays there.
    floor = (
        4 * torch.finfo(torch.float32).eps * float(f.ref_stats.mean("aligned").norm(dim=-1).max())
    )
    if float(s_blocked.norm()) > floor:
        small = revlens.ReversionBlocker(
            f.v,
            f.probes,
            f.lm,
            tokenizer=families.tokenizer(),
            method="update",
            refresh_every=1,
            probe_batch_size=None,
        )
        b4 = small.projection(_train(hf_model(aligned), small, lr=0.0025))
        f4 = small.projection(_train(hf_model(aligned), lr=0.0025))
        order_blocked = math.log(float(s_blocked.norm()) / max(float(b4.norm()), floor), 4)
        order_free = math.log(float(s_free.norm()) / float(f4.norm()), 4)
        assert order_blocked > order_free + 0.5, (
            order_blocked,
            order_free,
            s_blocked,
            b4,
            s_free,
            f4,
            floor,
        )
    hist = mon.history_
    assert (
        hist.step.tolist() == [s for s in (1, 2, 3) for _ in f.v.layers] and hist.cos.notna().all()
    )


@FAMILY
def test_bf16(family):
    f = fam(family)
    if family in HALF_PRECISION_BUG:
        with pytest.raises(UpstreamError, match=r"olmo2 in torch.bfloat16.*dtype=torch.float32"):
            revlens.collect(f.hist.restricted(), f.probes, dtype=torch.bfloat16, progress=False)
        # the workaround it names: monitor the plain HF model in bf16 (no bridge), also with a dir reference
        mon = revlens.ReversionMonitor(
            f.v, f.probes, f.dirs["aligned"], tokenizer=families.tokenizer()
        )
        table = mon.measure(hf_model(f.dirs["aligned"]).to(torch.bfloat16))
        scale = float(f.ref_stats.mean("aligned").norm(dim=-1).min())
        assert table.norm.notna().all() and (table.norm < 0.05 * scale).all(), (table, scale)
        return
    half = revlens.collect(
        f.hist.restricted(),
        f.probes,
        dtype=torch.bfloat16,
        layers=list(f.v.layers),
        n_bootstrap=0,
        progress=False,
    )
    assert half.meta["dtype"] == "bfloat16"
    for name in ("base", "aligned"):
        a, b = half.mean(name), f.ref_stats.mean(name)
        assert float((a - b).norm() / b.norm()) < 0.05, name


# ---------------------------------------------------------------------------------------- sites
@FAMILY
def test_every_site_kind_hf_reads_the_bridge_and_grow_equals_loop(family):
    f = fam(family)
    f.lm.load(f.hist.aligned)
    bridge, hf = access(f.lm), HFAccess(hf_model(f.dirs["aligned"]))
    batch = next(revlens.Probes(PROMPTS[:3]).tokenize(f.lm.tokenizer).batches(3))
    g = torch.Generator().manual_seed(0)
    for kind in revlens.sites.SITE_KINDS:
        if kind == "resid_mid" and family in PARALLEL:
            for acc in (bridge, hf):
                with pytest.raises(SiteError, match="resid_mid"):
                    acc.sites("all", kind)
            continue
        sites = {a: a.sites("all", kind) for a in (bridge, hf)}
        with torch.no_grad():
            ours = hf.capture(batch.tokens, sites[hf])[1]
            theirs = bridge.capture(batch.tokens, sites[bridge])[1]
        assert max(float((ours[k] - theirs[k]).abs().max()) for k in ours) <= 1e-5, kind
        stacks = [
            Stack(
                s.layer,
                "steer",
                torch.nn.functional.normalize(torch.randn(2, 64, generator=g), dim=-1),
                alphas=torch.tensor([3.0, -2.0]),
            )
            for s in sites[bridge]
        ]
        for acc in (bridge, hf):
            runs = {}
            for strategy in ("grow", "loop"):
                with torch.no_grad():
                    clean, values = run_stacks(
                        acc,
                        batch,
                        stacks,
                        f.metric.bind(f.lm.tokenizer, vocab_size=100),
                        sites={s.layer: s for s in sites[acc]},
                        strategy=strategy,
                    )
                runs[strategy] = torch.cat([clean[None], *values])
            assert float((runs["grow"] - runs["loop"]).abs().max()) <= 1e-5, (
                kind,
                type(acc).__name__,
            )


@FAMILY
def test_one_more_site_kind_through_every_stage(family):
    f = fam(family)
    kind = _extra_site(family)
    if kind == "resid_mid" and family in PARALLEL:
        with pytest.raises(SiteError, match="resid_mid"):
            revlens.collect(f.hist, f.probes, model=f.lm, site=kind, progress=False)
        with pytest.raises(SiteError, match="resid_mid"):
            revlens.ablation_study(
                f.hist, f.probes, f.metric, model=f.lm, site=kind, progress=False
            )
        mon = revlens.ReversionMonitor(
            f.v, f.probes, f.ref_stats, tokenizer=families.tokenizer(), site=kind
        )
        with pytest.raises(SiteError):
            mon.measure(hf_model(f.dirs["aligned"]))
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateLayerWarning)
        rep = revlens.analyze(
            f.hist,
            f.probes,
            model=f.lm,
            site=kind,
            methods="mean_diff",
            n_null=20,
            n_bootstrap=0,
            n_stability=0,
            progress=False,
        )
        v = rep.directions["mean_diff"]
        assert v.site == kind and rep.drift["cos"].notna().all()
        study = revlens.ablation_study(
            f.hist,
            f.probes,
            f.metric,
            model=f.lm,
            directions=v,
            layers=list(v.layers),
            site=kind,
            controls=2,
            steps="last",
            progress=False,
        )
    assert study.effects.metric.notna().all() and set(study.effects.layer) == set(v.layers)
    ref = revlens.collect(
        f.hist.restricted(),
        f.probes,
        model=f.lm,
        site=kind,
        layers=list(v.layers),
        n_bootstrap=0,
        progress=False,
    )
    mon = revlens.ReversionMonitor(v, f.probes, ref, tokenizer=families.tokenizer(), site=kind)
    model = hf_model(f.dirs["aligned"])
    table = mon.measure(model)
    # the aligned model measured against its own reference: no drift (HF path vs bridge statistics)
    assert (table["norm"] <= 1e-4 * max(1.0, math.sqrt(64))).all(), table
    blocker = revlens.ReversionBlocker(
        v,
        f.probes,
        ref,
        tokenizer=families.tokenizer(),
        site=kind,
        refresh_every=1,
        probe_batch_size=None,
    )
    _train(model, blocker, steps=2)
    free = _train(hf_model(f.dirs["aligned"]), steps=2)
    # (ln_final is the most nonlinear site: its second-order residue is the largest, ~0.25 of the free motion)
    assert float(blocker.projection(model).norm()) < 0.5 * float(blocker.projection(free).norm())
