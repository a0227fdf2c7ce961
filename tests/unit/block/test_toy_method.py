"""A new blocking method is one class in one file: two toy methods defined **here only**, registered,
and run through a plain blocked training loop, the Hugging Face ``Trainer`` (``add_to_trainer``,
``BlockingTrainer``) and the lab-facing constructors, with their effect asserted.

- ``FreezeLayer`` (a bare :class:`BlockingStrategy`): the parameters of one transformer block are
  put back after every optimizer step, so they end bit for bit where they started while the rest
  trains — the shape of a safety-layer freeze (SPPFT);
- ``HalfUpdate`` (a :class:`ReversionBlocker` method): after every step, remove **half** of the
  update's component along the per-layer gradients ``a_l`` of ``s_l`` (no restoring term), using the
  shared measurement (:meth:`ReversionBlocker.refresh`) and projection algebra. To first order the
  drift along ``v`` is halved.
"""

import copy

import pytest
import torch
from transformers import Trainer, TrainingArguments
from unit.block import tinyrev
from unit.block.tinyrev import one_thread  # noqa: F401 (autouse fixture)

import tiny
from revlens.block import (
    METHODS,
    BlockerConfig,
    BlockingStrategy,
    BlockingTrainer,
    ReversionBlocker,
    add_to_trainer,
    method_names,
    register,
)
from revlens.block.projection import projection_coefficients
from revlens.errors import ConfigError, NotFittedError

TOK = tiny.tiny_tokenizer()


@register("toy_freeze_layer")
class FreezeLayer(BlockingStrategy):
    """Keep the parameters of transformer block ``layer`` at their values when attached."""

    source = "toy"

    def __init__(self, layer: int) -> None:
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise ConfigError(f"layer must be a block index >= 0, got {layer!r}")
        self.layer = layer

    def prepare(self, model, *, optimizer=None, params=None) -> "FreezeLayer":
        prefix = f"transformer.h.{self.layer}."
        held = [(n, p) for n, p in model.named_parameters() if n.startswith(prefix)]
        if not held:
            raise ConfigError(
                f"layer={self.layer} is outside the model (no parameter named {prefix}*)"
            )
        self.frozen_ = [(p, p.detach().clone()) for _, p in held]
        self._start()
        return self

    @torch.no_grad()
    def after_step(self) -> None:
        self._check()
        moved = max(float((p - ref).abs().max()) for p, ref in self.frozen_)
        for p, ref in self.frozen_:
            p.copy_(ref)
        self._record("moved", moved)
        super().after_step()


@register("toy_half")
class HalfUpdate(ReversionBlocker):
    """Remove half of each step's component along ``span{a_l}`` (strength scales the half)."""

    def prepare(self, model, *, optimizer=None, params=None) -> "HalfUpdate":
        super().prepare(model, optimizer=optimizer, params=params)
        self.before_ = None
        return self

    def before_step(self) -> None:
        super().before_step()
        self.refresh()
        with torch.no_grad():
            self.before_ = self.jac_.dot([p.detach() for p in self.jac_.params])

    @torch.no_grad()
    def after_step(self) -> None:
        self._check()
        jac = self.jac_
        a_delta = jac.dot([p.detach() for p in jac.params]) - self.before_
        coef = projection_coefficients(self.gram_, 0.5 * self.strength * a_delta, ridge=self.ridge)
        jac.correct([p.data for p in jac.params], coef)
        self._note_active(coef)
        super().after_step()


def half(**kw) -> ReversionBlocker:
    return ReversionBlocker(
        tinyrev.direction(),
        tinyrev.probes(),
        tinyrev.pair()[1],
        tokenizer=TOK,
        method="toy_half",
        refresh_every=1,
        **kw,
    )


def s_of(model) -> torch.Tensor:
    return half().projection(model).abs()


# ---------------------------------------------------------------- the registry sees them
def test_registered_methods_are_valid_everywhere():
    assert (
        "toy_half" in METHODS and "toy_freeze_layer" not in METHODS
    )  # METHODS: ReversionBlocker methods
    assert {"toy_half", "toy_freeze_layer"} <= set(method_names())
    assert BlockerConfig(method="toy_half").method == "toy_half"
    assert type(half()) is HalfUpdate and half().method == "toy_half"
    with pytest.raises(ConfigError, match="toy_freeze_layer"):
        BlockerConfig(method="toy_freeze_layer")  # not an activation-space method
    with pytest.raises(ConfigError, match="already registered"):
        register("toy_half")(type("Other", (ReversionBlocker,), {}))


# ---------------------------------------------------------------- a plain blocked loop
def test_freeze_layer_in_a_plain_loop():
    start = copy.deepcopy(tinyrev.pair()[1])
    toy = FreezeLayer(1)
    with pytest.raises(NotFittedError):
        toy.after_step()
    model = tinyrev.train("revert", steps=5, opt="adamw", setup=lambda m, o: toy.attach(m, o))
    toy.detach()
    before, after = dict(start.named_parameters()), dict(model.named_parameters())
    frozen = [n for n in after if n.startswith("transformer.h.1.")]
    assert frozen and all(torch.equal(after[n], before[n]) for n in frozen)
    assert not torch.equal(
        after["transformer.h.0.attn.c_attn.weight"], before["transformer.h.0.attn.c_attn.weight"]
    )
    records = toy.records_
    assert [r.step for r in records] == [0, 1, 2, 3, 4] and all(r.value > 0 for r in records)
    assert [r.log_name for r in toy.measurements()] == ["toy_moved"]
    with pytest.raises(ConfigError, match="outside the model"):
        FreezeLayer(7).attach(copy.deepcopy(start), torch.optim.SGD(start.parameters(), lr=0.1))


def test_half_update_halves_the_drift_in_a_plain_loop():
    free = s_of(tinyrev.train("revert", steps=8))
    b = half()
    model = tinyrev.train("revert", steps=8, setup=lambda m, o: b.attach(m, o))
    b.detach()
    ratio = s_of(model) / free
    assert free.min() > 0.3  # the unblocked run moves along v
    assert ((ratio > 0.35) & (ratio < 0.65)).all(), ratio  # about half, per layer
    assert b.step_ == 8 and len(b.history_) == 16 and b.active_["rows"].eq(2).all()


# ---------------------------------------------------------------- the Hugging Face Trainer
class _Seqs(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.ids = torch.randint(2, 32, (32, 8), generator=torch.Generator().manual_seed(5))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _args(tmp_path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=0.05,
        optim="sgd",
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=1,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def test_both_toys_through_add_to_trainer_and_blocking_trainer(tmp_path):
    start = copy.deepcopy(tinyrev.pair()[1]).train()
    free = Trainer(model=copy.deepcopy(start), args=_args(tmp_path), train_dataset=_Seqs())
    free.train()

    toy, b = FreezeLayer(0), half()
    trainer = Trainer(model=copy.deepcopy(start), args=_args(tmp_path), train_dataset=_Seqs())
    add_to_trainer(
        trainer, b, toy
    )  # strategies act in this order: the freeze last, so it has the final word
    trainer.train()
    model = trainer.model
    frozen = [n for n, _ in model.named_parameters() if n.startswith("transformer.h.0.")]
    ref, got = dict(start.named_parameters()), dict(model.named_parameters())
    assert all(torch.equal(got[n], ref[n]) for n in frozen)
    assert not torch.equal(
        got["transformer.h.1.mlp.c_fc.weight"], ref["transformer.h.1.mlp.c_fc.weight"]
    )
    logged = [r for r in trainer.state.log_history if "loss" in r]
    assert len(logged) == 4
    assert all(
        {
            "revlens/toy_moved",
            "revlens/block_s_layer1",
            "revlens/block_s_layer2",
            "revlens/block_active_rows",
        }
        <= set(r)
        for r in logged
    )
    assert not toy.is_attached and not b.is_attached and toy.step_ == b.step_ == 4
    # the freeze and the half projection act on the same steps: layer 0's blocks stay put and
    # the drift along v is smaller than the free run's
    assert (s_of(model.eval()) < s_of(free.model.eval())).all()

    again = FreezeLayer(0)
    bt = BlockingTrainer(
        blocker=[again], model=copy.deepcopy(start), args=_args(tmp_path), train_dataset=_Seqs()
    )
    bt.train()
    assert all(torch.equal(dict(bt.model.named_parameters())[n], ref[n]) for n in frozen)
    assert [r["revlens/toy_moved"] > 0 for r in bt.state.log_history if "loss" in r] == [True] * 4
    with pytest.raises(ConfigError, match="blocking strateg"):
        BlockingTrainer(blocker=[object()], model=copy.deepcopy(start), args=_args(tmp_path))
