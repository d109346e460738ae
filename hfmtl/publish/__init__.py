"""What leaves a training: the saved model directory read back, its model card, the Hub, and the
export of one task to a standard transformers model."""

from .export import export_model_dir, export_task
from .hub import push_to_hub
from .model_card import build_model_card, write_model_card

__all__ = ["build_model_card", "export_model_dir", "export_task", "push_to_hub", "write_model_card"]
