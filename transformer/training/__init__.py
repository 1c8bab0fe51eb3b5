"""The training loop and what it needs: loss, learning-rate schedules, checkpoints, torchrun set-up."""

from transformer.training.checkpoint import load_checkpoint, load_for_inference, save_checkpoint
from transformer.training.trainer import Trainer

__all__ = ["Trainer", "load_checkpoint", "load_for_inference", "save_checkpoint"]
