"""The training loop and what it needs: loss, learning-rate schedules, checkpoints, torchrun set-up."""

from transformer.training.build import build_trainer
from transformer.training.checkpoint import load_checkpoint, load_for_inference, save_checkpoint
from transformer.training.trainer import Trainer

__all__ = ["Trainer", "build_trainer", "load_checkpoint", "load_for_inference", "save_checkpoint"]
