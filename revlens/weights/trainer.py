"""Hugging Face ``Trainer`` integration of :class:`~revlens.weights.WeightBlocker`: the one
callback every blocking strategy shares (:class:`revlens.block.BlockingCallback`), under the name
earlier releases used. ``Trainer(..., callbacks=[WeightBlockerCallback(blocker)])`` attaches on
``on_train_begin`` (to the Trainer's model, a PEFT model included, and its optimizer), projects
after every optimizer step, logs ``revlens/weights_removed`` / ``revlens/weights_update_norm`` and
detaches on ``on_train_end``; ``revlens.block.add_to_trainer`` and ``BlockingTrainer`` take a
``WeightBlocker`` as they take a ``ReversionBlocker``.
"""

from revlens.block.trainer import BlockingCallback

__all__ = ["WeightBlockerCallback"]

WeightBlockerCallback = BlockingCallback
"""The same class as :class:`revlens.block.BlockingCallback`."""
