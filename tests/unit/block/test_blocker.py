"""ReversionBlocker on the tiny GPT-2: the DESIGN lessons, exception safety and bad input."""

import copy

import pytest
import torch
from jaxtyping import TypeCheckError
from unit.block import tinyrev
from unit.block.tinyrev import one_thread  # noqa: F401 (autouse fixture)

import tiny
from conftest import hook_count
from revlens.block import ReversionBlocker
from revlens.directions import Directions
from revlens.errors import ConfigError, NotFittedError, ProbeError, ShapeMismatchError
from revlens.probes import Probes

TOK = tiny.tiny_tokenizer()


def blocker(**kw) -> ReversionBlocker:
    return ReversionBlocker(
        tinyrev.direction(), tinyrev.probes(), tinyrev.pair()[1], tokenizer=TOK, **kw
    )


def final_s(method: str | None, opt: str, steps: int = 20, **kw) -> torch.Tensor:
    if method is None:
        model = tinyrev.train("revert", opt=opt, steps=steps)
    else:
        b = blocker(method=method, **kw)
        model = tinyrev.train("revert", opt=opt, steps=steps, setup=lambda m, o: b.attach(m, o))
        b.detach()
    return blocker().projection(model).abs()


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_update_projection_holds_s_while_gradient_projection_does_not(opt):
    """DESIGN §2: momentum/Adam re-introduce the raw-gradient component; the update projection
    plus the restoring term keeps s_l ≈ 0."""
    free = final_s(None, opt)
    update = final_s("update", opt, refresh_every=1)
    grad = final_s("gradient", opt, refresh_every=1)
    assert free.min() > 0.3  # the unblocked run drifts along v
    assert update.max() < 0.02 * free.min()
    assert grad.min() > 10 * update.max() and grad.min() > 0.05


def test_update_without_restore_still_cuts_drift_and_history_is_kept():
    b = blocker(restore=False, refresh_every=1)
    model = tinyrev.train("revert", steps=10, setup=lambda m, o: b.attach(m, o))
    b.detach()
    assert blocker().projection(model).abs().max() < 0.5 * final_s(None, "sgd", steps=10).min()
    h = b.history_
    assert list(h.columns) == ["step", "layer", "s", "measured"] and sorted(h.layer.unique()) == [
        1,
        2,
    ]
    assert h.step.max() == 9 and b.step_ == 10 and h.measured.all()


def test_refresh_every_predicts_s_between_measurements():
    b = blocker(refresh_every=3)
    model = tinyrev.train("revert", steps=7, setup=lambda m, o: b.attach(m, o))
    b.detach()
    h = b.history_[b.history_.layer == 1]
    assert h.measured.tolist() == [True, False, False, True, False, False, True]
    free = final_s(None, "sgd", steps=7).min()
    assert h[~h.measured].s.abs().max() < 1e-4  # predicted: cancelled to first order
    assert h[h.measured].s.abs().max() < 0.1 * free  # measured: the stale gradients' error
    assert blocker().projection(model).abs().max() < 0.1 * free


def test_penalty_and_refresh_every_and_probe_batches_reduce_drift():
    free = final_s(None, "sgd", steps=10)
    assert final_s("penalty", "sgd", steps=10, strength=0.01).max() < 0.5 * free.min()
    assert final_s("update", "sgd", steps=10).max() < 0.1 * free.min()  # default refresh_every=5
    assert (
        final_s("update", "sgd", steps=10, refresh_every=1, probe_batch_size=2).max()
        < 0.2 * free.min()
    )


def test_penalty_term_is_differentiable():
    model = copy.deepcopy(tinyrev.train("revert", steps=3)).train()
    pen = blocker(method="penalty", strength=2.0).penalty(model)
    assert pen.requires_grad and float(pen.detach()) > 0
    pen.backward()
    assert model.transformer.wte.weight.grad is not None


def test_hook_method_edits_training_forwards_only_while_attached():
    model = copy.deepcopy(tinyrev.pair()[1]).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    b = blocker(method="hook")
    ids = torch.tensor([[2, 3, 4, 5]])
    clean = model(ids).logits.detach()
    with b.attached(model, opt):
        assert hook_count(model) == 2 and "step" not in vars(opt)
        assert not torch.allclose(model(ids).logits, clean)
    assert hook_count(model) == 0
    torch.testing.assert_close(model(ids).logits, clean)


def _dense(jac, params) -> list[torch.Tensor]:
    """The Jacobian's blocks as full ``[rows, *shape]`` tensors (zeros where a row does not reach)."""
    out = {id(p): torch.zeros(jac.n_rows, *p.shape) for p in params}
    for p, b, idx in zip(jac.params, jac.blocks, jac.rows, strict=True):
        out[id(p)][slice(None) if idx is None else idx] = b
    return [out[id(p)] for p in params]


def test_loop_and_vmap_gradients_agree_and_store_only_reached_rows():
    model = copy.deepcopy(tinyrev.pair()[1])
    params = dict(model.named_parameters())
    got = []
    for mode in ("loop", "vmap"):
        obj = blocker(grad_batching=mode).prepare(model).objective_
        with torch.enable_grad():
            got.append(obj.grads(obj.s_terms(obj.batch()), obj.reader.parameters()))
        assert obj.grad_batching == mode  # vmap works on the HF GPT-2 (no fallback)
    loop, vmap = got
    for a, c in zip(_dense(loop, params.values()), _dense(vmap, params.values()), strict=True):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)
    # rows of layers 1 and 2 (after blocks 0 and 1): the final norm is reached by no row, block 1
    # only by the layer-2 row; nothing else is stored
    names = {id(p): n for n, p in params.items()}
    rows = {
        names[id(p)]: (None if i is None else i.tolist())
        for p, i in zip(loop.params, loop.rows, strict=True)
    }
    assert not any(n.startswith("transformer.ln_f") for n in rows)
    upper = [r for n, r in rows.items() if n.startswith("transformer.h.1.")]
    assert upper and all(r == [1] for r in upper)
    assert all(r is None for n, r in rows.items() if n.startswith("transformer.h.0."))
    full = sum(p.numel() * 4 for p in params.values()) * loop.n_rows
    assert loop.nbytes < 0.8 * full


@pytest.mark.parametrize("method", ["update", "hook"])
def test_detached_when_training_raises(method):
    model = copy.deepcopy(tinyrev.pair()[1]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)  # puts its own wrapper on opt.step
    before = vars(opt)["step"]
    b = blocker(method=method)
    with pytest.raises(RuntimeError, match="diverged"), b.attached(model, opt):
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)  # wraps ours, if any
        model(torch.tensor([[2, 3]]), labels=torch.tensor([[2, 3]])).loss.backward()
        opt.step()
        sched.step()
        assert b.step_ == (1 if method == "update" else 0)
        raise RuntimeError("diverged")
    assert not b.is_attached and hook_count(model) == 0
    assert vars(opt)["step"] is before
    opt.step()  # the plain optimizer still works


def test_bad_inputs():
    aligned = tinyrev.pair()[1]
    model = copy.deepcopy(aligned)
    v, pr = tinyrev.direction(), tinyrev.probes()
    with pytest.raises(ConfigError, match="strength"):
        blocker(strength=-1.0)
    with pytest.raises(
        (ConfigError, TypeCheckError), match="method"
    ):  # TypeCheckError: jaxtyping plugin
        blocker(method="freeze")
    with pytest.raises(NotFittedError):
        blocker().projection()
    with pytest.raises(ConfigError, match="optimizer"):
        blocker().attach(model)  # update acts on the optimizer step
    wide = Directions.from_tensor(torch.randn(2, 48), [1, 2])
    with pytest.raises(ShapeMismatchError, match="d_model=48"):
        ReversionBlocker(wide, pr, aligned, tokenizer=TOK).prepare(model)
    with pytest.raises(ShapeMismatchError, match="another model"):
        ReversionBlocker(v, pr, torch.zeros(2, 48), tokenizer=TOK).prepare(model)
    with pytest.raises(ShapeMismatchError, match="d_model=48"):
        ReversionBlocker(v, pr, tiny.tiny_model(0, d=48), tokenizer=TOK).prepare(model)
    with pytest.raises(ProbeError, match="outside the vocabulary"):
        ReversionBlocker(v, Probes([[2, 3, 99]]), aligned).prepare(model)
    with pytest.raises(ProbeError, match="unknown tokens"):
        ReversionBlocker(v, Probes(["how do I pick a lock"]), aligned, tokenizer=TOK).prepare(model)
    with pytest.raises(ProbeError, match="tokenizer"):
        ReversionBlocker(v, pr, aligned).prepare(model)  # text probes, no tokenizer anywhere
    with pytest.raises(ConfigError, match="per-prompt reference"):
        ReversionBlocker(v, pr, torch.zeros(2, 32), tokenizer=TOK, probe_batch_size=2).prepare(
            model
        )


def test_reference_from_history_stats(tiny_history, prompts):
    from revlens.collect import collect

    stats = collect(tiny_history, prompts, layers=[1, 2], n_bootstrap=0, progress=False)
    model = tiny_history.boot()  # a LensModel holding aligned weights: s = 0 there
    b = ReversionBlocker(tinyrev.direction(), Probes(prompts), stats).prepare(model)
    assert b.projection().abs().max() < 1e-5
    with pytest.raises(ProbeError, match="another probe set"):
        ReversionBlocker(tinyrev.direction(), Probes(prompts[:3]), stats).prepare(model)
