"""The Accelerate training loop and everything it runs on: the Accelerator's setup (setup.py), per-task
data (data.py) and sampling (sampling.py), the optimizer step (steps.py), evaluation (evaluation.py),
checkpoints (checkpointing.py), the loop itself (trainer.py) and cross-validation (cross_validation.py)."""
