"""The Accelerate training loop and everything it runs on: the Accelerator's setup (setup.py) and the
engine the launcher asked for (engine.py), per-task data (data.py; a bad row named: bad_rows.py), each
task's batch stream (batches.py) and sampling (sampling.py), what trains and how fast
(optimization.py), the optimizer step (steps.py; the non-finite loss guard: nonfinite.py), loss logging
(loss_log.py), evaluation (evaluation.py), checkpoints (checkpointing.py, and each one's manifest:
manifest.py), the resume (resume.py) and its contract (resume_contract.py), the best model
(best_model.py), the run's end (finishing.py), the output directory's lock (run_lock.py) and starting
over in it (run_dir.py), a worker's tie to its launcher (launcher.py), the loop itself (trainer.py), the
hooks its side jobs hang on (callbacks.py) and cross-validation (cross_validation.py)."""
