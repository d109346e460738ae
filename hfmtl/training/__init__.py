"""The Accelerate training loop and everything it runs on: the Accelerator's setup (setup.py), per-task
data (data.py), each task's batch stream (batches.py) and sampling (sampling.py), what trains and how
fast (optimization.py), the optimizer step (steps.py), loss logging (loss_log.py), evaluation
(evaluation.py), checkpoints (checkpointing.py), the loop itself
(trainer.py), the hooks its side jobs hang on (callbacks.py) and cross-validation (cross_validation.py)."""
