#!/usr/bin/env python
"""Scale-out on GPUs: FSDP2 against DDP on a bert-base-sized encoder, tokens/s and peak memory per GPU.

For each engine of --engines, one `accelerate launch --config_file configs/accelerate/<engine>.yaml
--num_processes N` of the training recipe, with the same run config under both: the GLUE tasks of
configs/glue.yaml (its sampling weights), --steps steps of --batch-size rows per process, --max-length
tokens at most, no evaluation or checkpoint inside the run (the final model is saved). The encoder is a
randomly initialised bert-base (12 layers, hidden 768, 110M parameters; MiniLM's vocabulary) unless
--model names one: throughput and memory depend on the shapes, not on the weights.

Each process measures itself (a trainer callback, as benchmarks/throughput.py does): the non-padding
tokens (attention mask) of its batches after --warmup-steps, the time from the end of the warm-up to the
end of the last step (the device synchronised at both ends), and its peak allocated GPU memory over the
whole training (model, optimizer state, activations). tokens/s is the processes' tokens over the slowest
process's time; "per GPU" divides it by the number of processes. FSDP2 shards parameters, gradients and
optimizer state, so its memory per GPU should fall as processes are added, for some all-gather traffic.

    python benchmarks/scaling.py                               # every GPU of the machine, DDP then FSDP2
    python benchmarks/scaling.py --num-processes 4 --steps 200 --batch-size 64
    python benchmarks/scaling.py --smoke                       # CPU: the DDP arm on 2 gloo processes

Without GPUs only DDP runs (gloo, the recipe's --cpu): Accelerate builds FSDP for accelerator processes
only (docs/scaling.md), so asking for fsdp there is refused. Results: outputs/benchmarks/scaling/
(results.json with every process's numbers, the machine and the versions); the table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/runs.py, also when loaded by path
from runs import (  # noqa: E402
    OFFLINE_ENV,
    RECIPE,
    REPO,
    budget,
    machine_and_versions,
    random_encoder,
    read_config,
    tiny_encoder,
    write_config,
)

ENGINES = {"ddp": "configs/accelerate/ddp.yaml", "fsdp": "configs/accelerate/fsdp.yaml"}
SMOKE = {"steps": 3, "warmup_steps": 1, "batch_size": 4, "max_length": 64, "num_processes": 2}


def run_config(args: argparse.Namespace, model: str, output_dir: Path) -> dict[str, Any]:
    """configs/glue.yaml at the benchmark's budget: --steps steps, no evaluation or checkpoint inside."""
    config = budget(read_config(args.config), args.steps, args.batch_size, eval_steps=None)
    config["model"].update(name_or_path=model, max_length=args.max_length)
    config["train"].update(output_dir=str(output_dir), overwrite_output_dir=True, mixed_precision=args.mixed_precision)
    for task in config["tasks"].values():  # enough rows for every step of every process
        task.update(max_train_samples=args.steps * args.batch_size * args.num_processes, max_eval_samples=16)
    return config


def launch(engine: str, args: argparse.Namespace, config: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    """One `accelerate launch` of the recipe under `engine`; every process's measurement."""
    import shutil

    arm = root / engine
    arm.mkdir(parents=True, exist_ok=True)
    for stale in arm.glob("rank*.json"):
        stale.unlink()
    config_path = write_config(config, arm / "run.yaml")
    spec = arm / "spec.json"
    spec.write_text(json.dumps({"config": str(config_path), "warmup_steps": args.warmup_steps, "cpu": args.cpu}))
    with socket.socket() as s:  # a free rendezvous port, so that two benchmarks on one machine do not clash
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    command = [
        accelerate, "launch",
        "--config_file", str(REPO / ENGINES[engine]),
        "--num_processes", str(args.num_processes),
        "--main_process_port", str(port),
        str(Path(__file__).resolve()), "--worker", str(spec),
    ]  # fmt: skip
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, **OFFLINE_ENV})
    found = sorted(arm.glob("rank*.json"))
    if len(found) != args.num_processes:
        raise SystemExit(f"error: {engine}: {len(found)} of {args.num_processes} processes reported ({arm})")
    return [json.loads(path.read_text()) for path in found]


def worker(spec_path: str) -> None:
    """One process of a launch: recipes/train.py's `run` on the run config (the user's path: config
    checks, the Accelerator from the launcher's settings, the engine checks), measured by a callback;
    writes rank<i>.json."""
    import torch

    from hfmtl.training.callbacks import TrainerCallback
    from hfmtl.training.setup import peak_memory_mb

    spec = json.loads(Path(spec_path).read_text())
    warmup = spec["warmup_steps"]
    meter: dict[str, Any] = {"tokens": 0, "rows": 0}

    class Meter(TrainerCallback):
        def on_train_begin(self, trainer):
            next_batch = trainer.batches.next

            def counted(unit):
                batch = next_batch(unit)
                if trainer.state.global_step >= warmup:  # a batch of a timed step
                    meter["tokens"] += int(batch["attention_mask"].sum())
                    meter["rows"] += batch["input_ids"].shape[0]
                return batch

            trainer.batches.next = counted

        def on_step_end(self, trainer, step, task_names):
            if step in (warmup, trainer.total_steps):
                if trainer.accelerator.device.type == "cuda":  # the queued kernels belong to the timed steps
                    torch.cuda.synchronize(trainer.accelerator.device)
                meter["start" if step == warmup else "end"] = time.perf_counter()

    recipe = runpy.run_path(str(RECIPE), run_name="scaling_recipe")
    argv = ["--config", spec["config"], *(["--cpu"] if spec["cpu"] else [])]
    trainer = recipe["run"](recipe["parse_args"](argv), [Meter()])
    accelerator = trainer.accelerator
    result = {
        "process": accelerator.process_index,
        "processes": accelerator.num_processes,
        "engine": str(accelerator.distributed_type).removeprefix("DistributedType."),
        "device": str(accelerator.device),
        "timed_steps": trainer.total_steps - warmup,
        "seconds": round(meter["end"] - meter["start"], 4),
        "tokens": meter["tokens"],
        "rows": meter["rows"],
        "peak_memory_mb": round(peak_memory_mb(accelerator.device), 1),
    }
    out = Path(spec_path).parent / f"rank{accelerator.process_index}.json"
    out.write_text(json.dumps(result, indent=2))


def summarize(processes: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = max(p["seconds"] for p in processes)  # the slowest process sets the pace of the step
    tokens = sum(p["tokens"] for p in processes)
    return {
        "processes": len(processes),
        "engine": processes[0]["engine"],
        "tokens_per_second": round(tokens / seconds, 1),
        "tokens_per_second_per_process": round(tokens / seconds / len(processes), 1),
        "peak_memory_mb_per_process": max(p["peak_memory_mb"] for p in processes),
        "per_process": processes,
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'engine':<8}{'processes':>10}{'tokens/s':>12}{'tokens/s per process':>22}{'peak MB per process':>21}",
    ]
    for name, arm in results["engines"].items():
        lines.append(
            f"{name:<8}{arm['processes']:>10}{arm['tokens_per_second']:>12.0f}"
            f"{arm['tokens_per_second_per_process']:>22.0f}{arm['peak_memory_mb_per_process']:>21.0f}"
        )
    if "fsdp_vs_ddp" in results:
        r = results["fsdp_vs_ddp"]
        lines.append(
            f"FSDP2 / DDP: tokens/s {r['tokens_per_second']:.2f}x, peak memory per GPU {r['peak_memory']:.2f}x"
        )
    lines.append(
        "one process per GPU; tokens: non-padding; peak MB: the largest process's allocated GPU memory "
        "(CPU processes: peak resident memory)"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    gpus = torch.cuda.device_count()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", choices=sorted(ENGINES), help="Default: ddp fsdp (ddp without GPUs).")
    parser.add_argument("--num-processes", type=int, help="Processes per launch (default: every GPU).")
    parser.add_argument("--model", help="Encoder directory or Hub id (default: a random bert-base).")
    parser.add_argument("--config", default="configs/glue.yaml", help="The run config's tasks (default glue).")
    parser.add_argument("--steps", type=int, default=60, help="Optimizer steps per launch (default 60).")
    parser.add_argument("--warmup-steps", type=int, default=10, help="Steps left out of the timing (default 10).")
    parser.add_argument("--batch-size", type=int, default=32, help="Rows per process and step (default 32).")
    parser.add_argument("--max-length", type=int, default=128, help="Tokens per input at most (default 128).")
    parser.add_argument(
        "--mixed-precision", choices=["no", "bf16", "fp16"], help="train.mixed_precision (default bf16 on GPUs)."
    )
    parser.add_argument("--output-dir", default="outputs/benchmarks/scaling")
    parser.add_argument(
        "--smoke", action="store_true", help="DDP on 2 CPU processes, a tiny random encoder, 3 steps (CI)."
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one process of a launch
    args = parser.parse_args(argv)
    if args.worker:
        return args
    if args.smoke:
        args.steps, args.warmup_steps, args.batch_size = SMOKE["steps"], SMOKE["warmup_steps"], SMOKE["batch_size"]
        args.max_length, args.num_processes = SMOKE["max_length"], args.num_processes or SMOKE["num_processes"]
    args.cpu = gpus == 0
    args.engines = args.engines or (["ddp"] if args.cpu else ["ddp", "fsdp"])
    args.num_processes = args.num_processes or gpus
    args.mixed_precision = args.mixed_precision or ("no" if args.cpu else "bf16")
    if args.cpu and "fsdp" in args.engines:
        parser.error("fsdp needs GPUs: Accelerate builds FSDP for accelerator processes only; use --engines ddp")
    if args.num_processes < 1:
        parser.error("--num-processes must be at least 1 (no GPU found: give the number of CPU processes)")
    if not 0 <= args.warmup_steps < args.steps:
        parser.error(f"--warmup-steps must be below --steps ({args.steps})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    root = Path(args.output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if args.model:
        model = args.model
    elif args.smoke:
        model = tiny_encoder(root / "tiny-bert")
    else:
        model = random_encoder(root / "bert-base")  # BertConfig's defaults are bert-base
    results: dict[str, Any] = machine_and_versions() | {
        "settings": vars(args) | {"model": model, "output_dir": str(root)},
        "engines": {},
    }
    for engine in args.engines:
        config = run_config(args, model, root / engine / "out")
        results["engines"][engine] = summarize(launch(engine, args, config, root))
    if {"ddp", "fsdp"} <= set(results["engines"]):
        ddp, fsdp = results["engines"]["ddp"], results["engines"]["fsdp"]
        results["fsdp_vs_ddp"] = {
            "tokens_per_second": round(fsdp["tokens_per_second"] / ddp["tokens_per_second"], 3),
            "peak_memory": round(fsdp["peak_memory_mb_per_process"] / ddp["peak_memory_mb_per_process"], 3),
        }
    (root / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
