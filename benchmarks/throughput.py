#!/usr/bin/env python
"""Training throughput: hfmtl's loop vs `transformers.Trainer`, the cost of multi-tasking, length grouping.

Four comparisons, measured in ONE run; their runs alternate (ABCD, DCBA, ABCD... for --repeats), and each
run is a fresh process of its own, so that its peak memory is its own (--smoke, which only checks that
the script works, runs them all in its own process):

  trainer    hfmtl on one task vs `transformers.Trainer` on `AutoModelForSequenceClassification`: the same
             encoder weights, the same tokenized features fed as the same batches in the same order (the
             Trainer gets hfmtl's sampler with the same seed), the same batch size, AdamW kernel (--optim,
             on both sides), learning rate, weight decay, no warm-up, linear decay, clipping at 1.0 and steps.
  multitask  hfmtl on that one task vs on every task of --config (configs/glue.yaml: 5 GLUE tasks with its
             sampling weights), at the same number of optimizer steps.
  grouping   hfmtl on the tasks of `multitask` with train.train_sampling_strategy random vs group_by_length.
  overhead   hfmtl on one task vs the same data as 5 identical tasks: what the multi-task loop itself costs.

Every run also reports model TFLOP/s (6 N per non-padding token plus attention); with a known peak (a
bf16 H100/H200, or --peak-tflops) the model FLOPs utilisation (MFU) is printed too.

Evaluation and checkpoints are off on both sides. hfmtl runs its real code path: a config built by
`hfmtl.config.config_from_dict` and `recipes/train.py`'s `train_stage`, instrumented by a trainer callback
(it wraps the trainer's `batches.next` to count each batch, and reads the clock at `on_step_end`); the
Trainer by overriding `training_step` (to count the batch) and a callback at `on_step_end`. Timed: the training loop from the end of the warm-up
step(s) to the end of the last step (data loading, forward, backward, clipping, optimizer and scheduler
steps, loss logging); model loading, tokenization, setup and the final save are not timed.

    python benchmarks/throughput.py                                   # all parts, MiniLM, GPU if there is one
    python benchmarks/throughput.py --parts trainer --steps 200 --repeats 5
    python benchmarks/throughput.py --bf16                            # bf16 autocast on both sides (GPU)
    python benchmarks/throughput.py --bf16 --random-encoder bert-base # GPU: bert-base size, MFU printed
    python benchmarks/throughput.py --smoke --output /tmp/t.json      # a few steps on a tiny random encoder

The table goes to stdout, every raw measurement (with the machine, versions and date) to --output
(default outputs/benchmarks/throughput.json). docs/benchmarks.md explains each number.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/runs.py, also when loaded by path
from runs import MINILM, machine, random_encoder, tiny_encoder, versions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TABLE_HEADER = f"{'run':<26} {'examples/s':>11} {'tokens/s':>11} {'padding eff.':>12} {'peak MB':>9} {'TFLOP/s':>9}"

# run name -> (side, which tasks, length-grouped batches)
RUNS = {
    "hfmtl_1task": ("hfmtl", "single", False),
    "trainer_1task": ("trainer", "single", False),
    "hfmtl_mix": ("hfmtl", "mix", False),
    "hfmtl_mix_grouped": ("hfmtl", "mix", True),
    "hfmtl_copies": ("hfmtl", "copies", False),
}
COPIES = 5  # the "overhead" part: the one task's data under this many task names
# part -> (title, the two runs in table order, the ratio's numerator and denominator, the ratio's name)
PARTS = {
    "trainer": ("hfmtl vs transformers.Trainer", ("hfmtl_1task", "trainer_1task"), "hfmtl / Trainer"),
    "multitask": ("hfmtl, one task vs the task mix", ("hfmtl_1task", "hfmtl_mix"), "mix / one task"),
    "grouping": ("hfmtl on the task mix, length grouping", ("hfmtl_mix", "hfmtl_mix_grouped"), "grouped / not"),
    # the same data as one task and as five (identical copies, uniform sampling): what multi-tasking
    # itself costs in the loop (task draws, per-task loaders and heads), with the data held equal
    "overhead": ("hfmtl, one task vs the same data as 5 tasks", ("hfmtl_1task", "hfmtl_copies"), "5 tasks / 1"),
}
RATIO_OF = {"trainer": ("hfmtl_1task", "trainer_1task")}  # other parts: second run / first run
METRICS = (
    "examples_per_second",
    "tokens_per_second",
    "padding_efficiency",
    "peak_memory_mb",
    "model_tflops_per_second",
)
# Dense bf16 tensor-core peaks (without sparsity), TFLOP/s, from NVIDIA's H100 and H200 datasheets: the
# denominator of MFU when --peak-tflops is not given. Matched against torch.cuda.get_device_name, in order.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4))


# --- one run, in its own process -----------------------------------------------------------------------


class _Probe:
    """Times the steps after the warm-up and counts what they were fed: the same code on both sides.

    Steps are counted from 1. A batch fed to step k (k > warmup) is counted; the clock starts at the end
    of step `warmup` and stops at the end of step `total`, after a CUDA synchronize at both ends only (a
    synchronize per step would stall the GPU queue and slow both sides).
    """

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total
        self.examples = self.padded_tokens = 0
        self.tokens = None  # a device tensor: summed without a host sync per step
        self.squared_lengths = None  # sum over examples of (non-padding length)^2: the attention FLOPs
        self.task_batches: dict[str, int] = {}
        self.start = self.end = None
        self.memory_at_start_mb = self.peak_memory_mb = None

    def on_batch(self, step_index: int, batch: dict, device, task_name: str) -> None:
        """`step_index`: completed steps before this batch's step (the trainer's global_step)."""
        if self.memory_at_start_mb is None:
            self.memory_at_start_mb = _current_memory_mb(device)
        if step_index < self.warmup:
            return
        if "attention_mask" not in batch:
            raise KeyError(f"the batch has no attention_mask (keys {sorted(batch)}): cannot count tokens")
        mask = batch["attention_mask"]
        self.examples += mask.shape[0]
        self.padded_tokens += mask.numel()
        total = mask.sum()
        self.tokens = total if self.tokens is None else self.tokens + total
        squares = (mask.sum(dim=1) ** 2).sum()
        self.squared_lengths = squares if self.squared_lengths is None else self.squared_lengths + squares
        self.task_batches[task_name] = self.task_batches.get(task_name, 0) + 1

    def on_step_end(self, step: int, device) -> None:
        if step not in (self.warmup, self.total):
            return
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize(device)
        if step == self.warmup:
            self.start = time.perf_counter()
        else:
            self.end = time.perf_counter()
            from hfmtl.training.setup import peak_memory_mb

            self.peak_memory_mb = peak_memory_mb(device)

    def result(self, device, model) -> dict[str, Any]:
        if self.start is None or self.end is None:
            raise RuntimeError(f"the run did not reach step {self.total} (timer start {self.start}, end {self.end})")
        seconds = self.end - self.start
        tokens = int(self.tokens)
        flops = model_flops(model, tokens, int(self.squared_lengths))
        return {
            "device": str(device),
            "timed_steps": self.total - self.warmup,
            "seconds": seconds,
            "examples": self.examples,
            "tokens": tokens,
            "padded_tokens": self.padded_tokens,
            "examples_per_second": self.examples / seconds,
            "tokens_per_second": tokens / seconds,
            "padding_efficiency": tokens / self.padded_tokens,
            "peak_memory_mb": self.peak_memory_mb,
            "model_flops": flops,
            "model_tflops_per_second": flops / seconds / 1e12,
            "memory_at_start_mb": self.memory_at_start_mb,
            "memory_kind": _memory_kind(device),
            "batches_per_task": self.task_batches,
        }


def model_flops(model, tokens: int, squared_lengths: int) -> float:
    """Training FLOPs the model needs for the timed batches, counting non-padding tokens only (the
    convention of model FLOPs utilisation, Chowdhery et al. 2022, PaLM, appendix B): 6 N per token for
    the N parameters of the transformer layers (forward 2 N, backward 4 N; embeddings are lookups, and the
    pooler and heads see one token per example), plus 12 L d per token and per token it attends to, for L
    layers of width d: an example of n tokens attends n x n, so 12 L d sum(n^2) in all."""
    from hfmtl.model.backbone import find_encoder_layers

    encoder = model.encoder if hasattr(model, "heads") else model.base_model  # hfmtl | transformers
    layers = find_encoder_layers(encoder)
    layer_parameters = sum(p.numel() for p in layers.parameters())
    return 6 * layer_parameters * tokens + 12 * len(layers) * encoder.config.hidden_size * squared_lengths


def peak_tflops(device_name: str | None, bf16: bool, given: float | None) -> float | None:
    """The device's peak for MFU: --peak-tflops, else the bf16 datasheet peak of a known GPU, else none."""
    if given:
        return given
    if device_name and bf16:
        for name, tflops in BF16_PEAK_TFLOPS:
            if name in device_name:
                return tflops
    return None


def _memory_kind(device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated"
    return "peak resident set size of the process (ru_maxrss)"


def _current_memory_mb(device) -> float:
    """Allocated CUDA memory, else this process's resident set size now."""
    if device.type == "cuda":
        import torch

        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _run_config(spec: dict[str, Any]) -> dict[str, Any]:
    """The hfmtl run config (a plain dict) of a run: its tasks from --config, no evaluation, no checkpoints."""
    import yaml

    source = yaml.safe_load(Path(spec["config"]).read_text())
    tasks = {}
    for name in spec["tasks"]:
        task = dict(source["tasks"][spec.get("task_sources", {}).get(name, name)])
        task.update(eval_split=None, max_train_samples=spec["max_train_samples"], batch_size=spec["batch_size"])
        task.pop("max_eval_samples", None)
        tasks[name] = task
    sampling = dict(source.get("sampling") or {})
    if spec.get("task_sources"):
        sampling = {"strategy": "uniform"}
    if sampling.get("weights"):
        sampling["weights"] = {k: v for k, v in sampling["weights"].items() if k in tasks}
    return {
        "model": {"name_or_path": spec["model"], "max_length": spec["max_length"], "pooling": "cls"},
        "tasks": tasks,
        "sampling": sampling,
        "train": {
            "output_dir": spec["output_dir"],
            "overwrite_output_dir": True,
            "seed": spec["seed"],
            "max_steps": spec["steps"],
            "per_device_train_batch_size": spec["batch_size"],
            "learning_rate": spec["learning_rate"],
            "optim": spec["optim"],
            "weight_decay": spec["weight_decay"],
            "warmup_steps": 0,
            "lr_scheduler_type": "linear",
            "max_grad_norm": 1.0,
            "mixed_precision": "bf16" if spec["bf16"] else "no",
            "eval_steps": None,
            "save_steps": None,
            "load_best_model_at_end": False,
            "logging_steps": spec["logging_steps"],
            "train_sampling_strategy": "group_by_length" if spec["group_by_length"] else "random",
            "report_to": [],
        },
    }


def _run_hfmtl(spec: dict[str, Any]) -> dict[str, Any]:
    """hfmtl's real path: config_from_dict -> build_accelerator -> recipes/train.py's train_stage."""
    import runpy

    from hfmtl.config import config_from_dict
    from hfmtl.training.setup import build_accelerator

    config = config_from_dict(_run_config(spec))
    accelerator = build_accelerator(config, cpu=spec["cpu"])
    probe = _Probe(spec["warmup_steps"], spec["steps"])
    recipe = runpy.run_path(str(REPO / "recipes" / "train.py"), run_name="throughput_recipe")
    trainer = recipe["train_stage"](config, accelerator, [_probe_callback(probe)])
    model = accelerator.unwrap_model(trainer.model)
    return probe.result(accelerator.device, accelerator.unwrap_model(trainer.model)) | {
        "optimizer": _optimizer_description(trainer.optimizer),
        "attn_implementation": model.config.encoder._attn_implementation,
        "pin_memory": next(iter(trainer.train_loaders.values())).pin_memory,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _probe_callback(probe: _Probe):
    """A callback of hfmtl's trainer that feeds `probe`: each batch a step takes (the trainer's
    `batches.next` wrapped once training begins) and the end of each step."""
    from hfmtl.training.callbacks import TrainerCallback

    class Probed(TrainerCallback):
        def on_train_begin(self, trainer):
            next_batch, device = trainer.batches.next, trainer.accelerator.device

            def counted_next_batch(task_name):
                batch = next_batch(task_name)
                probe.on_batch(trainer.state.global_step, batch, device, task_name)
                return batch

            trainer.batches.next = counted_next_batch

        def on_step_end(self, trainer, step, task_names):
            probe.on_step_end(step, trainer.accelerator.device)

    return Probed()


def _run_trainer(spec: dict[str, Any]) -> dict[str, Any]:
    """`transformers.Trainer` on AutoModelForSequenceClassification, fed hfmtl's tokenized features."""
    from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback, TrainingArguments, set_seed

    from hfmtl import build_task
    from hfmtl.config import config_from_dict
    from hfmtl.training.data import EpochSampler, load_tokenizer, prepare_task_data

    config = config_from_dict(_run_config(spec))
    (task_name,) = spec["tasks"]
    tokenizer = load_tokenizer(config.model)
    task = build_task(task_name, config.tasks[task_name])
    features = prepare_task_data(task, tokenizer, config.model.max_length, contextlib.nullcontext).train
    head = task.head_spec()
    set_seed(spec["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(
        spec["model"], num_labels=head["num_labels"], problem_type=head["problem_type"]
    )
    args = TrainingArguments(
        output_dir=spec["output_dir"],
        seed=spec["seed"],
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch_size"],
        learning_rate=spec["learning_rate"],
        weight_decay=spec["weight_decay"],
        warmup_steps=0,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        # the same AdamW kernel on both sides, or this would compare kernels instead of training loops
        optim=spec["optim"],
        bf16=spec["bf16"],
        use_cpu=spec["cpu"],
        eval_strategy="no",
        save_strategy="no",
        logging_steps=spec["logging_steps"],
        report_to="none",
        dataloader_num_workers=0,
    )
    probe = _Probe(spec["warmup_steps"], spec["steps"])

    class SameOrderSampler(EpochSampler):
        """hfmtl's sampler of a single task (seed + task index 0): the Trainer sees the same batches."""

        def set_epoch(self, epoch: int) -> None:
            self.use_epoch(epoch)

    class ProbedTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return SameOrderSampler(
                len(train_dataset if train_dataset is not None else self.train_dataset), spec["seed"]
            )

        def training_step(self, model, inputs, num_items_in_batch=None):
            probe.on_batch(self.state.global_step, inputs, self.args.device, task_name)
            return super().training_step(model, inputs, num_items_in_batch)

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            probe.on_step_end(state.global_step, args.device)

    trainer = ProbedTrainer(
        model=model, args=args, train_dataset=features, processing_class=tokenizer, callbacks=[StepEnd()]
    )
    trainer.train()
    return probe.result(args.device, model) | {
        "optimizer": _optimizer_description(trainer.optimizer),
        "attn_implementation": model.config._attn_implementation,
        "pin_memory": args.dataloader_pin_memory and args.device.type == "cuda",
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _optimizer_description(optimizer) -> str:
    optimizer = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper
    defaults = optimizer.defaults
    flags = [k for k in ("fused", "foreach") if defaults.get(k)]
    return f"{type(optimizer).__name__}(lr={defaults['lr']}, weight_decay={defaults['weight_decay']}{''.join(f', {k}' for k in flags)})"


def worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = _run_hfmtl(spec) if spec["side"] == "hfmtl" else _run_trainer(spec)
    Path(spec["result_path"]).write_text(json.dumps(result))


# --- the benchmark: runs, alternating, then the tables ----------------------------------------------------


def _launch(spec: dict[str, Any], scratch: Path, in_process: bool = False) -> dict[str, Any]:
    """One run in a fresh Python process (`in_process`, for --smoke: in this one, whose peak memory it
    then reports); its result, plus the process's wall time."""
    spec_path = scratch / f"{spec['run']}_r{spec['repeat']}.json"
    spec["result_path"] = str(spec_path.with_suffix(".result.json"))
    spec["output_dir"] = str(scratch / f"{spec['run']}_r{spec['repeat']}")
    spec_path.write_text(json.dumps(spec))
    started = time.time()
    if in_process:
        worker(str(spec_path))
    else:
        _worker_process(spec, spec_path)
    result = json.loads(Path(spec["result_path"]).read_text())
    shutil.rmtree(spec["output_dir"], ignore_errors=True)  # the saved model is not needed
    return result | {"repeat": spec["repeat"], "process_wall_seconds": round(time.time() - started, 1)}


def _worker_process(spec: dict[str, Any], spec_path: Path) -> None:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
        raise RuntimeError(
            f"run {spec['run']} (repeat {spec['repeat']}) failed with exit code {done.returncode}:\n{tail}"
        )


def _median(values: list[float]) -> float:
    return statistics.median(values)


def summarize(runs: dict[str, dict], parts: list[str]) -> dict[str, Any]:
    """Each part: each run's medians over repeats, and the median of the per-repeat (paired) ratios."""
    summary = {}
    for part in parts:
        title, (first, second), ratio_name = PARTS[part]
        numerator, denominator = RATIO_OF.get(part, (second, first))
        rows = {
            name: {m: _median([r[m] for r in runs[name]["measurements"]]) for m in METRICS} for name in (first, second)
        }
        pairs = list(zip(runs[numerator]["measurements"], runs[denominator]["measurements"]))
        per_repeat = [{m: a[m] / b[m] for m in METRICS} for a, b in pairs]
        summary[part] = {
            "title": title,
            "runs": rows,
            "ratio": {"name": ratio_name, "numerator": numerator, "denominator": denominator}
            | {m: _median([r[m] for r in per_repeat]) for m in METRICS},
            "ratios_per_repeat": per_repeat,
        }
    return summary


def format_tables(results: dict[str, Any]) -> str:
    s = results["settings"]
    precision = "bf16 autocast" if s["bf16"] else "fp32"
    lines = []
    for part, summary in results["parts"].items():
        runs = results["runs"]
        lines.append("")
        lines.append(
            f"({part}) {summary['title']}: batch {s['batch_size']}, {s['steps']} steps ({s['warmup_steps']} warm-up "
            f"not timed), max_length {s['max_length']}, {precision} on {results['machine']['device']}, "
            f"median of {s['repeats']}"
        )
        lines.append(TABLE_HEADER)
        for name, row in summary["runs"].items():
            lines.append(
                f"{runs[name]['label']:<26} {row['examples_per_second']:>11.1f} {row['tokens_per_second']:>11.0f} "
                f"{row['padding_efficiency']:>12.3f} {row['peak_memory_mb']:>9.0f} {row['model_tflops_per_second']:>9.4g}"
            )
        r = summary["ratio"]
        lines.append(
            f"{r['name']:<26} {r['examples_per_second']:>10.3f}x {r['tokens_per_second']:>10.3f}x "
            f"{r['padding_efficiency']:>11.3f}x {r['peak_memory_mb']:>8.3f}x {r['model_tflops_per_second']:>8.3f}x"
        )
    memory = next(iter(results["runs"].values()))["measurements"][0]["memory_kind"]
    lines.append(f"\npeak MB: {memory}; tokens: non-padding tokens (attention mask); ratios: median of paired repeats")
    lines.append("TFLOP/s: model FLOPs (6 N per token + attention, non-padding tokens) per second")
    peak = results["settings"].get("peak_tflops")
    if peak:
        lines.append(f"MFU (model FLOPs utilisation) against a peak of {peak} TFLOP/s:")
        for name in dict.fromkeys(n for summary in results["parts"].values() for n in summary["runs"]):
            row = _median([m["model_tflops_per_second"] for m in results["runs"][name]["measurements"]])
            lines.append(f"  {results['runs'][name]['label']:<26} {row / peak:.3f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--parts", nargs="+", choices=list(PARTS), default=list(PARTS), help="Which comparisons (default: all)."
    )
    parser.add_argument("--model", help=f"Encoder directory or Hub id (default {MINILM}; --smoke: tiny random BERT).")
    parser.add_argument(
        "--config",
        default="configs/glue.yaml",
        help="Tasks, their data and the mix's sampling (default configs/glue.yaml).",
    )
    parser.add_argument("--task", default="sst2", help="The one-task runs' task, of --config (default sst2).")
    parser.add_argument("--mix", nargs="+", help="Tasks of the multi-task runs (default: every task of --config).")
    parser.add_argument("--steps", type=int, help="Optimizer steps per run, warm-up included (default 100).")
    parser.add_argument("--warmup-steps", type=int, default=1, help="Leading steps not timed (default 1).")
    parser.add_argument("--repeats", type=int, help="Alternating rounds of runs (default 3).")
    parser.add_argument("--batch-size", type=int, help="Examples per batch, every task (default 32).")
    parser.add_argument("--max-length", type=int, help="Tokens per input (default: model.max_length of --config).")
    parser.add_argument(
        "--max-train-samples",
        type=int,
        help="Train examples kept per task (default steps x batch size: no task runs out within the run).",
    )
    parser.add_argument("--learning-rate", type=float, default=5e-5, help="AdamW's, both sides (default 5e-5).")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's, both sides (default 0.01).")
    parser.add_argument("--logging-steps", type=int, default=50, help="Loss logging interval, both sides (default 50).")
    parser.add_argument("--seed", type=int, default=42, help="Model init and data order, both sides (default 42).")
    parser.add_argument(
        "--optim",
        choices=["adamw_torch_fused", "adamw_torch"],
        default="adamw_torch_fused",
        help="AdamW kernel, both sides: train.optim of hfmtl, `optim` of the Trainer (default adamw_torch_fused, "
        "the default of both).",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (for GPUs; slow on CPU).")
    parser.add_argument("--cpu", action="store_true", help="Use the CPU even if a GPU is present.")
    parser.add_argument(
        "--random-encoder",
        choices=["bert-base"],
        help="Instead of --model: a randomly initialised bert-base-sized BERT (12 layers, hidden 768).",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="The device's peak TFLOP/s, for MFU (default: the bf16 datasheet peak of an H100/H200 under --bf16).",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="3 steps, 1 repeat, batch 8, tiny slices, a tiny random encoder, every run in this process.",
    )
    parser.add_argument(
        "--output",
        default="outputs/benchmarks/throughput.json",
        help="JSON of every measurement (default outputs/benchmarks/throughput.json).",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one measurement from a spec file
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    import torch
    import yaml

    smoke = args.smoke
    steps = args.steps or (3 if smoke else 100)
    repeats = args.repeats or (1 if smoke else 3)
    batch_size = args.batch_size or (8 if smoke else 32)
    if not 0 < args.warmup_steps < steps:
        raise SystemExit(f"error: --warmup-steps={args.warmup_steps} must be in [1, --steps={steps})")
    config_path = (REPO / args.config) if not Path(args.config).is_absolute() else Path(args.config)
    source = yaml.safe_load(config_path.read_text())
    mix = args.mix or list(source["tasks"])
    for name in [args.task, *mix]:
        if name not in source["tasks"]:
            raise SystemExit(f"error: task {name!r} is not in {args.config} (has {sorted(source['tasks'])})")
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    if args.bf16 and device == "cpu":
        print("note: --bf16 on the CPU runs, but far slower than fp32 there", file=sys.stderr)
    output = Path(args.output).resolve()
    scratch = Path(tempfile.mkdtemp(prefix="hfmtl-throughput-"))
    try:
        if args.random_encoder and args.model:
            raise SystemExit("error: give --model or --random-encoder, not both")
        if args.random_encoder:
            model = random_encoder(scratch / "bert-base-random")  # BertConfig's defaults are bert-base
        else:
            model = args.model or (tiny_encoder(scratch / "tiny-bert") if smoke else str(MINILM))
        gpu_name = torch.cuda.get_device_name(0) if device == "cuda" else None
        settings = {
            "parts": args.parts,
            "model": model,
            "config": str(config_path),
            "task": args.task,
            "mix": mix,
            "steps": steps,
            "warmup_steps": args.warmup_steps,
            "repeats": repeats,
            "batch_size": batch_size,
            "max_length": args.max_length or (64 if smoke else source["model"].get("max_length", 128)),
            "max_train_samples": args.max_train_samples or steps * batch_size,
            "learning_rate": args.learning_rate,
            "weight_decay": args.weight_decay,
            "logging_steps": args.logging_steps,
            "seed": args.seed,
            "optim": args.optim,
            "bf16": args.bf16,
            "cpu": args.cpu,
            "random_encoder": args.random_encoder,
            "peak_tflops": peak_tflops(gpu_name, args.bf16, args.peak_tflops),
            "smoke": smoke,
        }
        names = [n for n in RUNS if any(n in PARTS[p][1] for p in args.parts)]
        runs: dict[str, dict] = {}
        for name in names:
            side, which, grouped = RUNS[name]
            tasks = {"single": [args.task], "mix": mix, "copies": [f"{args.task}_{i}" for i in range(COPIES)]}[which]
            label = f"{'Trainer' if side == 'trainer' else 'hfmtl'}, {len(tasks)} task{'s' * (len(tasks) > 1)}"
            if which == "copies":
                label = f"hfmtl, {args.task} as {COPIES} tasks"
            runs[name] = {
                "task_sources": {t: args.task for t in tasks} if which == "copies" else {},
                "label": label + (", grouped" if grouped else ""),
                "side": side,
                "tasks": tasks,
                "group_by_length": grouped,
                "measurements": [],
            }
        print(f"throughput: {len(names)} runs x {repeats} repeats on {device}, model {model}", flush=True)
        for repeat in range(repeats):
            for name in names if repeat % 2 == 0 else names[::-1]:
                run = runs[name]
                spec = settings | {
                    "run": name,
                    "repeat": repeat,
                    "side": run["side"],
                    "tasks": run["tasks"],
                    "task_sources": run["task_sources"],
                    "group_by_length": run["group_by_length"],
                }
                result = _launch(spec, scratch, in_process=smoke)
                run["measurements"].append(result)
                print(
                    f"  repeat {repeat + 1}/{repeats} {run['label']:<24} {result['examples_per_second']:9.1f} examples/s "
                    f"{result['tokens_per_second']:9.0f} tokens/s  ({result['process_wall_seconds']} s in all)",
                    flush=True,
                )
        for run in runs.values():  # measurements keyed by repeat, for the paired ratios
            run["measurements"].sort(key=lambda m: m["repeat"])
        results = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(device),
            "versions": versions(),
            "settings": settings,
            "runs": runs,
            "parts": summarize(runs, args.parts),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    bad = [
        (part, m, v)
        for part, s in results["parts"].items()
        for m, v in s["ratio"].items()
        if m in METRICS and not (math.isfinite(v) and v > 0)
    ]
    if bad:
        print(f"warning: non-positive or non-finite ratios {bad}", file=sys.stderr)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(format_tables(results))
    print(f"\nRaw measurements: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
