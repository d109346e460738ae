"""Per-task evaluation under Accelerate: gather predictions from every process, score each task.

Used by the trainer every `eval_steps` and by `recipes/evaluate.py` (``hfmtl eval``) on a saved model.
"""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..tasks import Task
from ..tasks.metrics import greater_is_better
from .data import TaskData


@torch.no_grad()
def evaluate_tasks(
    model, tasks: dict[str, Task], data: dict[str, TaskData], eval_loaders: dict, accelerator: Accelerator
) -> dict[str, float]:
    """Every task's metrics on its eval split, as ``eval/<task>/<metric>``, plus ``eval/mean``: the mean
    over tasks of each task's main metric, negated where lower is better (so a higher ``eval/mean`` is
    always better, and picks the best checkpoint).

    Args:
        model: a prepared `MultiTaskModel`.
        tasks: task_name -> Task (after `setup`).
        data: task_name -> TaskData (eval features and raw eval examples are used).
        eval_loaders: task_name -> prepared eval DataLoader (in dataset order).
        accelerator: the run's Accelerator.
    """
    was_training = model.training
    model.eval()
    results: dict[str, float] = {}
    main_values = []
    for name, loader in eval_loaders.items():
        task, outputs = tasks[name], []
        for batch in tqdm(loader, desc=f"eval {name}", leave=False, disable=not accelerator.is_local_main_process):
            logits = model(task=name, **batch).logits
            tensors = {
                # sequence lengths differ between processes: pad before gathering
                key: accelerator.pad_across_processes(value, dim=1, pad_index=-100) if value.dim() > 1 else value
                for key, value in task.eval_outputs(batch, logits).items()
            }
            gathered = accelerator.gather_for_metrics(tensors)
            outputs.append({k: v.cpu().numpy() for k, v in gathered.items()})
        metrics = task.compute_metrics(outputs, data[name].eval_features, data[name].eval_examples)
        task.check_main_metric(metrics)
        main_values.append(task.signed_main_metric(metrics))
        results.update({f"eval/{name}/{k}": float(v) for k, v in metrics.items()})
    if main_values:
        results["eval/mean"] = float(np.mean(main_values))
    if was_training:
        model.train()
    return results


def metric_directions(tasks: dict[str, Task], keys: list[str]) -> dict[str, bool]:
    """``{key: greater_is_better}`` for the logged evaluation keys whose direction is known: each task's
    main metric as the task declares it, the others as `hfmtl.tasks.metrics` knows them, ``eval/mean`` True.

    Example:
        >>> metric_directions({}, ["eval/mean"])
        {'eval/mean': True}
    """
    directions: dict[str, bool] = {}
    for key in keys:
        if key == "eval/mean":
            directions[key] = True
            continue
        _, task_name, metric = key.split("/", 2)
        task = tasks.get(task_name)
        known = task.greater_is_better if task is not None and metric == task.main_metric else greater_is_better(metric)
        if known is not None:
            directions[key] = known
    return directions
