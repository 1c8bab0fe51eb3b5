"""The training loop and what it needs: loss, optimizer update, schedules, checkpoints, resume, torchrun set-up."""

from transformer.training.build import build_trainer, training_run
from transformer.training.loss import Seq2SeqLoss
from transformer.training.optim import build_optimizer
from transformer.training.trainer import Trainer
from transformer.training.update import UpdateStep

__all__ = ["Seq2SeqLoss", "Trainer", "UpdateStep", "build_optimizer", "build_trainer", "training_run"]
