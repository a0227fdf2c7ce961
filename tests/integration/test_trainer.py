"""Blocking and monitoring inside a real ``transformers.Trainer`` (tiny GPT-2, CPU)."""

import copy
import warnings

import pytest
import torch
from transformers import Trainer, TrainingArguments
from unit.block import tinyrev
from unit.block.tinyrev import one_thread  # noqa: F401 (autouse fixture)

import tiny
from conftest import hook_count
from revlens.block import BlockingTrainer, ReversionBlocker, ReversionBlockerCallback
from revlens.monitor import ReversionMonitor, ReversionWarning

TOK = tiny.tiny_tokenizer()


class _Data(torch.utils.data.Dataset):
    def __init__(self, items: dict[str, torch.Tensor]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(next(iter(self.items.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.items.items()}


def reverting_data() -> _Data:
    """Random sequences with the base model's next-token log-probs (distillation toward base)."""
    data = torch.randint(2, 32, (64, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        target = torch.log_softmax(tinyrev.pair()[0](data).logits, -1)
    return _Data({"input_ids": data, "target": target})


def control_data() -> _Data:
    seqs = torch.randint(20, 32, (64, 8), generator=torch.Generator().manual_seed(3))
    return _Data({"input_ids": seqs, "labels": seqs})


class KLTrainer(Trainer):
    """Distils toward the ``target`` log-probs of each example."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logp = torch.log_softmax(model(input_ids=inputs["input_ids"]).logits, -1)
        return torch.nn.functional.kl_div(
            logp, inputs["target"], log_target=True, reduction="batchmean"
        )


class KLBlockingTrainer(BlockingTrainer, KLTrainer):
    """BlockingTrainer composed with a custom ``compute_loss``."""


def args(tmp_path, steps: int = 9) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=16,
        learning_rate=0.1,
        optim="sgd",
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        remove_unused_columns=False,
    )


def monitor(**kw) -> ReversionMonitor:
    return ReversionMonitor(
        tinyrev.direction(), tinyrev.probes(), tinyrev.pair()[1], tokenizer=TOK, **kw
    )


def blocker(**kw) -> ReversionBlocker:
    return ReversionBlocker(
        tinyrev.direction(), tinyrev.probes(), tinyrev.pair()[1], tokenizer=TOK, **kw
    )


def aligned_copy() -> torch.nn.Module:
    return copy.deepcopy(tinyrev.pair()[1]).train()


def test_monitor_fires_on_reverting_run_and_stays_silent_on_control(tmp_path):
    mon = monitor(every=3)
    with pytest.warns(ReversionWarning, match="step 6"):
        KLTrainer(
            model=aligned_copy(),
            args=args(tmp_path),
            train_dataset=reverting_data(),
            callbacks=[mon.as_trainer_callback()],
        ).train()
    assert mon.history_.step.unique().tolist() == [3, 6, 9] and len(mon.alerts_) == 2

    quiet = monitor(every=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReversionWarning)
        Trainer(
            model=aligned_copy(),
            args=args(tmp_path),
            train_dataset=control_data(),
            callbacks=[quiet.as_trainer_callback()],
        ).train()
    assert len(quiet.history_) == 6 and not quiet.alerts_


def test_monitor_can_stop_the_trainer(tmp_path):
    mon = monitor(every=2, patience=1, stop=True)
    trainer = KLTrainer(
        model=aligned_copy(),
        args=args(tmp_path, steps=20),
        train_dataset=reverting_data(),
        callbacks=[mon.as_trainer_callback()],
    )
    with pytest.warns(ReversionWarning):
        trainer.train()
    assert mon.should_stop_ and trainer.state.global_step == 2


@pytest.mark.parametrize("how", ["subclass", "callback"])
def test_blocker_changes_the_trajectory(tmp_path, how):
    free_mon, mon = monitor(every=3), monitor(every=3)
    with pytest.warns(ReversionWarning):
        KLTrainer(
            model=aligned_copy(),
            args=args(tmp_path),
            train_dataset=reverting_data(),
            callbacks=[free_mon.as_trainer_callback()],
        ).train()
    b = blocker(refresh_every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReversionWarning)
        if how == "subclass":
            KLBlockingTrainer(
                blocker=b,
                model=aligned_copy(),
                args=args(tmp_path),
                train_dataset=reverting_data(),
                callbacks=[mon.as_trainer_callback()],
            ).train()
        else:
            KLTrainer(
                model=aligned_copy(),
                args=args(tmp_path),
                train_dataset=reverting_data(),
                callbacks=[ReversionBlockerCallback(b), mon.as_trainer_callback()],
            ).train()
    free, held = free_mon.history_, mon.history_
    assert free.proj.abs().min() > 0.1
    assert held.proj.abs().max() < 0.01 * free.proj.abs().max()  # held at ~0 to second order
    assert held.cos.abs().max() < 0.05 and free.cos.min() > 0.6
    assert b.step_ == 9 and not b.is_attached


def test_blocking_trainer_detaches_when_training_raises(tmp_path):
    class Exploding(KLBlockingTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.state.global_step == 2:
                raise RuntimeError("diverged")
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    model = aligned_copy()
    b = blocker(method="hook")
    trainer = Exploding(blocker=b, model=model, args=args(tmp_path), train_dataset=reverting_data())
    with pytest.raises(RuntimeError, match="diverged"):
        trainer.train()
    assert not b.is_attached and hook_count(model) == 0


# ---------------------------------------------------------------- on the shipped lab pair
def _lab():
    from revlens.lab import asset_dir, load_pair

    pair = asset_dir() / "pair0"
    if not (pair / "pair.json").is_file():
        pytest.skip("the shipped lab pair assets/lab/pair0 is missing")
    return load_pair(pair)[:2]


class _TaskData(torch.utils.data.Dataset):
    """The lab's benign fine-tuning batches (``sample_task``), as a Trainer dataset."""

    def __init__(self, n: int, seed: int) -> None:
        from revlens.lab.language import sample_task
        from revlens.lab.train import encode_examples

        self.ids, self.mask, self.labels = encode_examples(
            sample_task(n, torch.Generator().manual_seed(seed)), answer_only=True
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


@pytest.mark.slow
def test_lab_trainer_monitor_and_blocker(tmp_path):
    """Real Trainer on the lab pair: the monitor warns on the benign fine-tune of the aligned
    model, stays silent on the control fine-tune of the base model (drift from base), and the
    blocker holds the drift along v_rev at ~0."""
    from revlens.lab import build_tokenizer
    from revlens.lab.blocked import lab_directions, lab_probes

    base, aligned = _lab()
    tok, probes = build_tokenizer(), lab_probes("heldout")
    v = lab_directions(base, aligned, [1, 2, 3, 4], probes=probes)
    targs = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=20,
        per_device_train_batch_size=32,
        learning_rate=0.1,
        optim="sgd",
        optim_args="momentum=0.9",
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    data = _TaskData(640, 0)

    def fit(start, reference, callbacks, blocker=None):
        model = copy.deepcopy(start).train()
        cls = BlockingTrainer if blocker is not None else Trainer
        kw = {"blocker": blocker} if blocker is not None else {}
        cls(model=model, args=targs, train_dataset=data, callbacks=callbacks, **kw).train()
        return model

    mon = ReversionMonitor(v, probes, aligned, tokenizer=tok, every=5)
    with pytest.warns(ReversionWarning):
        fit(aligned, aligned, [mon.as_trainer_callback()])
    ctrl = ReversionMonitor(v, probes, base, tokenizer=tok, every=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReversionWarning)
        fit(base, base, [ctrl.as_trainer_callback()])
    blocked = ReversionMonitor(v, probes, aligned, tokenizer=tok, every=5)
    b = ReversionBlocker(v, probes, aligned, tokenizer=tok)  # defaults
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReversionWarning)
        fit(aligned, aligned, [blocked.as_trainer_callback()], blocker=b)
    free, held = mon.history_, blocked.history_
    assert (free.cos > free.null_p99).sum() >= 4  # e.g. layers 2-3 at steps 5 and 10
    assert held.cos.abs().max() < 0.05 and held.proj.abs().max() < 0.1 * free.proj.abs().max()
