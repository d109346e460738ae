#!/usr/bin/env python
"""Where a training step's time goes: hfmtl's real loop under `torch.profiler`.

The steps of `recipes/train.py`'s `train_stage` are cut into labelled ranges -- fetching the batch
(dataloader + collation + device transfer), forward, backward, gradient clipping, optimizer step,
zero_grad -- and what no range covers is the loop's own bookkeeping. It also counts the host syncs per
step (`aten::_local_scalar_dense`: what `.item()`, `float(tensor)` and friends run), which stall a GPU's
queue, and lists the operators that took the most time.

    python benchmarks/profile_loop.py                                   # SST-2 alone, MiniLM, 30 steps
    python benchmarks/profile_loop.py --tasks sst2 cola mrpc rte stsb   # the GLUE mix, one task per step
    python benchmarks/profile_loop.py --tasks sst2 cola mrpc rte stsb --balancing pcgrad  # all tasks per step
    python benchmarks/profile_loop.py --smoke                           # a few steps on a tiny random encoder

Prints the breakdown; writes it as JSON and a Chrome trace (chrome://tracing, or https://ui.perfetto.dev)
under --output-dir. Profiling adds its own overhead to every operator: read shares, not absolute speed
(benchmarks/throughput.py measures speed).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import runpy
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/runs.py, also when loaded by path
from runs import REPO, machine_and_versions, read_config, tiny_encoder  # noqa: E402

# range label -> what it holds; "step" encloses all the others
RANGES = {
    "hfmtl/step": "one optimizer step, all included",
    "hfmtl/next_batch": "next batch: dataloader, collation (tokenizer.pad), transfer to the device",
    "hfmtl/forward": "model forward (encoder + heads + losses)",
    "hfmtl/backward": "backward (accelerator.backward, or per-task autograd.grad of a gradient method)",
    "hfmtl/clip_grad_norm": "gradient clipping",
    "hfmtl/optimizer_step": "optimizer step and learning-rate scheduler step",
    "hfmtl/zero_grad": "optimizer.zero_grad",
}
SYNC_OPS = ("aten::_local_scalar_dense",)


def _run_config(args: argparse.Namespace, model: str | None) -> dict[str, Any]:
    source = read_config(args.config)
    config = copy.deepcopy(source)
    missing = [t for t in args.tasks if t not in source["tasks"]]
    if missing:
        raise SystemExit(f"error: tasks {missing} are not in {args.config} (has {sorted(source['tasks'])})")
    config["tasks"] = {t: source["tasks"][t] for t in args.tasks}
    for task in config["tasks"].values():
        task["eval_split"] = None
        if args.smoke:
            task["max_train_samples"] = 64
    if config.get("sampling", {}).get("weights"):
        config["sampling"]["weights"] = {t: w for t, w in config["sampling"]["weights"].items() if t in args.tasks}
    if model:
        config["model"]["name_or_path"] = model
    config["train"].update(
        output_dir=str(Path(args.output_dir) / "model"),
        overwrite_output_dir=True,
        max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.batch_size,
        eval_steps=None,
        save_steps=None,
        load_best_model_at_end=False,
        report_to=[],
    )
    if args.balancing:
        config["balancing"] = {"step": "all_tasks", "method": args.balancing}
    return config


def _labelled(function, label: str):
    from torch.profiler import record_function

    def wrapper(*args, **kwargs):
        with record_function(label):
            return function(*args, **kwargs)

    return wrapper


def profile(args: argparse.Namespace, model: str | None) -> dict[str, Any]:
    """Train `warmup + steps` steps; profile the last `steps`; return the breakdown."""
    import torch
    from accelerate import Accelerator
    from torch.profiler import ProfilerActivity, schedule

    from hfmtl.config import config_from_dict
    from hfmtl.model.modeling import MultiTaskModel
    from hfmtl.training.setup import build_accelerator

    config = config_from_dict(_run_config(args, model))
    accelerator = build_accelerator(config, cpu=args.cpu)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if accelerator.device.type == "cuda" else [])
    profiler = torch.profiler.profile(
        activities=activities,
        schedule=schedule(wait=0, warmup=args.warmup, active=args.steps, repeat=1),
        record_shapes=False,
    )

    # Label the loop's parts: a trainer callback opens and closes each step's range and labels the
    # trainer's batch source, optimizer and scheduler; the library methods a step calls are wrapped
    # (the loop's own code is not touched).
    patches = {
        (MultiTaskModel, "forward"): _labelled(MultiTaskModel.forward, "hfmtl/forward"),
        (Accelerator, "backward"): _labelled(Accelerator.backward, "hfmtl/backward"),
        (Accelerator, "clip_grad_norm_"): _labelled(Accelerator.clip_grad_norm_, "hfmtl/clip_grad_norm"),
        (torch.autograd, "grad"): _labelled(torch.autograd.grad, "hfmtl/backward"),
    }
    originals = {key: getattr(*key) for key in patches}
    for (owner, name), replacement in patches.items():
        setattr(owner, name, replacement)
    try:
        recipe = runpy.run_path(str(REPO / "recipes" / "train.py"), run_name="profile_recipe")
        with profiler:
            trainer = recipe["train_stage"](config, accelerator, [_labelling_callback(profiler)])
    finally:
        for (owner, name), original in originals.items():
            setattr(owner, name, original)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    profiler.export_chrome_trace(str(out / "trace.json"))
    return _breakdown(profiler, args.steps) | {"optimizer": type(trainer.optimizer.optimizer).__name__}


def _labelling_callback(profiler):
    """A trainer callback: each optimizer step in an "hfmtl/step" range, then the profiler's next step;
    the batch fetches, the optimizer's and scheduler's steps and zero_grad labelled once training begins."""
    from torch.profiler import record_function

    from hfmtl.training.callbacks import TrainerCallback

    class LabelSteps(TrainerCallback):
        def on_train_begin(self, trainer):
            trainer.batches.next = _labelled(trainer.batches.next, "hfmtl/next_batch")
            trainer.optimizer.step = _labelled(trainer.optimizer.step, "hfmtl/optimizer_step")
            trainer.optimizer.zero_grad = _labelled(trainer.optimizer.zero_grad, "hfmtl/zero_grad")
            trainer.scheduler.step = _labelled(trainer.scheduler.step, "hfmtl/optimizer_step")

        def on_step_begin(self, trainer, step, task_names):
            self.step_range = record_function("hfmtl/step")
            self.step_range.__enter__()

        def on_step_end(self, trainer, step, task_names):
            self.step_range.__exit__(None, None, None)
            profiler.step()

    return LabelSteps()


def _breakdown(profiler, steps: int) -> dict[str, Any]:
    events = profiler.key_averages()
    by_name = {e.key: e for e in events}
    milliseconds = {
        label: by_name[label].cpu_time_total / 1000 / steps if label in by_name else 0.0 for label in RANGES
    }
    step = milliseconds["hfmtl/step"]
    parts = {label: ms for label, ms in milliseconds.items() if label != "hfmtl/step"}
    parts["loop bookkeeping (no range)"] = max(step - sum(parts.values()), 0.0)
    syncs = sum(by_name[name].count for name in SYNC_OPS if name in by_name) / steps
    syncs_by_part: dict[str, float] = {}
    for event in profiler.events():
        if event.name in SYNC_OPS:
            part = _enclosing_range(event)
            syncs_by_part[part] = syncs_by_part.get(part, 0.0) + 1 / steps
    top = sorted(
        (e for e in events if not e.key.startswith(("hfmtl/", "ProfilerStep", "Optimizer."))),
        key=lambda e: e.self_cpu_time_total,
        reverse=True,
    )[:15]
    return {
        "steps_profiled": steps,
        "step_ms": step,
        "parts_ms": parts,
        "host_syncs_per_step": syncs,
        "host_syncs_per_step_by_part": syncs_by_part,
        "top_ops": [
            {
                "op": e.key,
                "self_cpu_ms_per_step": e.self_cpu_time_total / 1000 / steps,
                "calls_per_step": e.count / steps,
            }
            for e in top
        ],
    }


def _enclosing_range(event) -> str:
    """The innermost labelled range (other than the whole step) an operator ran in."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in RANGES and parent.name != "hfmtl/step":
            return parent.name
        parent = parent.cpu_parent
    return "loop bookkeeping (no range)"


def format_report(result: dict[str, Any]) -> str:
    lines = [
        f"Per optimizer step (mean of {result['steps_profiled']} profiled steps): {result['step_ms']:.1f} ms",
        f"{'part':<32} {'ms/step':>9} {'share':>7}",
    ]
    for label, ms in result["parts_ms"].items():
        lines.append(f"{label:<32} {ms:>9.1f} {ms / result['step_ms']:>7.1%}")
    by_part = ", ".join(f"{k}: {v:.1f}" for k, v in result["host_syncs_per_step_by_part"].items())
    lines.append(
        f"host syncs per step (aten::_local_scalar_dense): {result['host_syncs_per_step']:.1f} ({by_part or 'none'})"
    )
    lines.append("\nTop operators by self CPU time:")
    lines.append(f"{'operator':<48} {'ms/step':>9} {'calls/step':>11}")
    for op in result["top_ops"]:
        lines.append(f"{op['op'][:48]:<48} {op['self_cpu_ms_per_step']:>9.1f} {op['calls_per_step']:>11.1f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", default="configs/glue.yaml", help="Tasks and their data (default configs/glue.yaml)."
    )
    parser.add_argument("--tasks", nargs="+", default=["sst2"], help="Tasks of --config to train (default sst2).")
    parser.add_argument(
        "--balancing", help="A balancing method: profile all-tasks steps with it (default: one task per step)."
    )
    parser.add_argument(
        "--model", help="Encoder directory or Hub id (default: the config's; --smoke: tiny random BERT)."
    )
    parser.add_argument("--steps", type=int, default=30, help="Profiled steps (default 30).")
    parser.add_argument("--warmup", type=int, default=3, help="Steps before profiling starts (default 3).")
    parser.add_argument("--batch-size", type=int, default=32, help="Examples per task batch (default 32).")
    parser.add_argument("--cpu", action="store_true", help="Use the CPU even if a GPU is present.")
    parser.add_argument(
        "--output-dir", default="outputs/benchmarks/profile", help="Report JSON and trace.json go here."
    )
    parser.add_argument(
        "--smoke", action="store_true", help="4 profiled steps on a tiny random encoder and 64 examples."
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup = 4, 1
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or (tiny_encoder(out / "tiny-bert") if args.smoke else None)
    with contextlib.redirect_stdout(sys.stderr):  # the recipe's progress goes to stderr; the report to stdout
        result = profile(args, model)
    result = machine_and_versions() | {"settings": vars(args)} | result
    (out / "profile.json").write_text(json.dumps(result, indent=2))
    print(format_report(result))
    print(f"\nJSON: {out / 'profile.json'}; Chrome trace: {out / 'trace.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
