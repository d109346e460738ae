#!/usr/bin/env python
"""Inference throughput: the GLUE tasks in one call, task by task, through `transformers.pipeline`, and served.

Three parts, on the CPU, on a trained run of configs/glue.yaml (MiniLM, five heads: sst2, cola, mrpc,
rte, stsb). Every arm answers the same inputs at the same batch size, after a warm-up, and the arms of
a part run side by side in one process, in alternating order (A B C, C B A...) for --repeats rounds:

  tasks     (a) the five tasks answered by one call, ``predictor.predict("all", inputs)``, vs (b) five
            single-task calls vs (c) five exported single-task models through `transformers.pipeline`
            (exported by hfmtl.publish.export). Also the three pair tasks in one call (mrpc+rte+stsb,
            which read the same pair) vs one pair task, and sst2+cola vs sst2. One GLUE input carries
            a sentence (SST-2, CoLA) and a pair (MRPC, RTE, STS-B): two distinct encoder rows, which is
            where the shared pass can share and where it cannot (hfmtl/inference/shared_pass.py).
  pipeline  (d) the Predictor on one task vs `transformers.pipeline` on that task exported, each task.
  serve     (e) `hfmtl serve` under 32 concurrent clients, with and without dynamic batching
            (benchmarks/serving_load.py): requests/s and p50/p99 latency.

Inputs are real validation rows (the data files named by the model's config.yaml). Without --model, the
script trains one first (recipes/train.py on configs/glue.yaml, --train-steps steps) into a cache under
--output-dir: how long the heads trained changes no throughput.

    python benchmarks/inference.py                                # all parts, default sizes
    python benchmarks/inference.py --model outputs/glue           # the run of `make train`
    python benchmarks/inference.py --parts tasks pipeline --inputs 512 --repeats 5
    python benchmarks/inference.py --smoke                        # tiny random encoder, tiny sizes

The tables go to stdout, every measurement (with the machine, versions and date) to --output-json.
docs/benchmarks.md explains each number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/*.py, also when loaded by path
from inference_arms import (  # noqa: E402
    COMBINED,
    export_tasks,
    glue_inputs,
    pipeline_arms,
    predictor_arms,
    prepare_model,
    time_arms,
)
from runs import machine, tiny_encoder, versions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARTS = ("tasks", "pipeline", "serve")
TARGETS = {"five_tasks_cost": 1.3, "predictor_vs_pipeline": 1.0, "batching_speedup": 3.0}
SMOKE = {"inputs": 12, "batch_size": 4, "repeats": 1, "warmup": 4, "clients": 4, "requests": 16, "serve_warmup": 4}


_STARTED = time.monotonic()


def _progress(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {message}", flush=True)


def _median_ratio(seconds: dict[str, list[float]], numerator: list[str], denominator: list[str]) -> float:
    """Median over rounds of (summed seconds of `numerator`) / (summed seconds of `denominator`)."""
    rounds = range(len(next(iter(seconds.values()))))
    return statistics.median(
        sum(seconds[n][r] for n in numerator) / sum(seconds[d][r] for d in denominator) for r in rounds
    )


def _row(label: str, tasks: str, n: int, seconds: list[float], encoder: dict[str, int] | None) -> dict[str, Any]:
    row = {"arm": label, "tasks": tasks, "examples_per_second": n / statistics.median(seconds), "seconds": seconds}
    if encoder:
        row["encoder_rows_per_example"] = encoder["rows"] / n
        row["encoder_passes"] = encoder["passes"]
        row["padding_efficiency"] = encoder["tokens"] / max(1, encoder["padded_tokens"])
    return row


def measure_arms(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    """The tasks and pipeline parts: every arm they need, timed together."""
    from hfmtl.inference import Predictor

    predictor = Predictor.from_pretrained(str(model_dir), device="cpu", batch_size=args.batch_size)
    tasks = list(predictor.tasks)
    fields = {task: predictor.fields(task) for task in tasks}
    combined = []
    if "tasks" in args.parts:
        combined = [n for n, ts in COMBINED.items() if ts == "all" or set(ts) <= set(tasks)]
    inputs = glue_inputs(model_dir, fields, args.inputs)
    arms = predictor_arms(predictor, tasks, combined, args.batch_size)
    _progress(f"exporting {len(tasks)} tasks as standard transformers models")
    exported = export_tasks(model_dir, tasks, args.output_dir / "exported")
    # the pipelines truncate where the Predictor does: the run's model.max_length
    run_model = (predictor.run_config or {}).get("model") or {}
    max_length = run_model.get("max_length") or predictor.tokenizer.model_max_length
    arms.update(pipeline_arms(exported, fields, args.batch_size, max_length))
    _progress(f"timing {len(arms)} arms on {len(inputs)} inputs, {args.repeats} rounds")
    timed = time_arms(arms, inputs, repeats=args.repeats, warmup=args.warmup)
    seconds = {name: r["seconds"] for name, r in timed.items()}
    n = len(inputs)
    one = [f"one:{t}" for t in tasks]
    pipes = [f"pipeline:{t}" for t in tasks]
    rows = [_row(name, ",".join(tasks) if COMBINED.get(name) == "all" else ",".join(COMBINED[name]), n,
                 seconds[name], timed[name]["encoder"]) for name in combined]  # fmt: skip
    rows += [_row(name, name.split(":")[1], n, seconds[name], timed[name]["encoder"]) for name in one + pipes]
    if "tasks" in args.parts:
        per_round = {label: [sum(seconds[a][r] for a in group) for r in range(args.repeats)]
                     for label, group in (("five calls", one), ("five pipelines", pipes))}  # fmt: skip
        rows += [_row(label, "sum of the single-task arms", n, s, None) for label, s in per_round.items()]
    ratios: dict[str, Any] = {}
    if "tasks" in args.parts:
        ratios["one_call_speedup"] = {
            "vs five single-task calls": _median_ratio(seconds, one, ["all"]),
            "vs five pipelines": _median_ratio(seconds, pipes, ["all"]),
        }
        cost = {f"all {len(tasks)} tasks / {t}": _median_ratio(seconds, ["all"], [f"one:{t}"]) for t in tasks}
        if {"sst2", "mrpc"} <= set(tasks):
            cost[f"all {len(tasks)} tasks / (sst2 + mrpc)"] = _median_ratio(seconds, ["all"], ["one:sst2", "one:mrpc"])
        if "pairs3" in combined:
            cost["mrpc+rte+stsb / mrpc"] = _median_ratio(seconds, ["pairs3"], ["one:mrpc"])
        if "singles2" in combined:
            cost["sst2+cola / sst2"] = _median_ratio(seconds, ["singles2"], ["one:sst2"])
        ratios["cost_vs_one_task"] = cost
    # examples/s of the Predictor over the pipeline's: > 1 means the Predictor is faster
    ratios["predictor_vs_pipeline"] = {t: _median_ratio(seconds, [f"pipeline:{t}"], [f"one:{t}"]) for t in tasks}
    return {"inputs": n, "example_input": inputs[0], "rows": rows, "ratios": ratios, "exported": {
        t: str(p) for t, p in exported.items()}}  # fmt: skip


def measure_serving(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    from serving_load import compare, payloads_from_config

    server_args: list[str] = []
    if args.max_batch_size is not None:
        server_args += ["--max-batch-size", str(args.max_batch_size)]
    if args.max_wait_ms is not None:
        server_args += ["--max-wait-ms", str(args.max_wait_ms)]
    server_args += ["--batch-size", str(args.batch_size), "--device", "cpu"]
    _progress(f"serving: {args.clients} clients, a batched server, then an unbatched one")
    return compare(
        model_dir,
        payloads_from_config(model_dir),
        clients=args.clients,
        requests=args.requests,
        warmup=args.serve_warmup,
        server_args=tuple(server_args),
    )


def _verdict(value: float, target: float, higher: bool) -> str:
    met = value >= target if higher else value <= target
    return f"target {'≥' if higher else '≤'} {target}x: {'met' if met else 'missed'}"


def print_report(results: dict[str, Any]) -> None:
    s = results["settings"]
    m, v = results["machine"], results["versions"]
    print(f"\nmachine: {m['cpu']}, {m['cpu_cores']} CPU cores, {m['torch_threads']} torch threads, CPU only")
    print(f"versions: torch {v['torch']}, transformers {v['transformers']}, hfmtl {v['hfmtl']} ({v['git_commit']})")
    print(f"model: {results['model']} ({results['model_note']})")
    print(
        f"1-minute load average: {results['load_average_at_start']:.2f} at the start, "
        f"{results['load_average_at_end']:.2f} at the end (on an idle machine, about 0 before the run)"
    )
    arms = results.get("arms")
    if arms:
        print(f"\n{arms['inputs']} inputs, batch size {s['batch_size']}, {s['repeats']} rounds after a warm-up "
              f"of {s['warmup']} inputs; median of rounds")  # fmt: skip
        print(f"{'arm':<18} {'examples/s':>11} {'enc. rows/ex':>12} {'passes':>7} {'pad eff.':>9}  tasks")
        for r in arms["rows"]:
            extra = (f"{r['encoder_rows_per_example']:>12.2f} {r['encoder_passes']:>7} {r['padding_efficiency']:>9.3f}"
                     if "encoder_passes" in r else f"{'':>12} {'':>7} {'':>9}")  # fmt: skip
            print(f"{r['arm']:<18} {r['examples_per_second']:>11.1f} {extra}  {r['tasks']}")
        ratios = arms["ratios"]
        for label, value in ratios.get("one_call_speedup", {}).items():
            print(f"one call for all tasks, speed-up {label}: {value:.2f}x")
        if "cost_vs_one_task" in ratios:
            print(
                f"\ncost (seconds) of several tasks in one call relative to one task (target ≤ {TARGETS['five_tasks_cost']}x)"
            )
            for label, value in ratios["cost_vs_one_task"].items():
                print(f"  {label:<28} {value:.2f}x")
        print(f"\nPredictor / pipeline, examples/s on one exported task (target ≥ {TARGETS['predictor_vs_pipeline']}x)")
        for task, value in ratios["predictor_vs_pipeline"].items():
            print(f"  {task:<8} {value:.2f}x  {_verdict(value, TARGETS['predictor_vs_pipeline'], True)}")
    serve = results.get("serve")
    if serve:
        print(f"\nhfmtl serve, {serve['batched']['clients']} concurrent clients, one input per request")
        print(f"{'arm':<10} {'requests':>8} {'errors':>6} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'batches':>8}")
        for arm in ("batched", "unbatched"):
            r = serve[arm]
            print(f"{arm:<10} {r['requests']:>8} {r['errors']:>6} {r['requests_per_s']:>9} {r['p50_ms']:>9} "
                  f"{r['p99_ms']:>9} {r['batching']['batches']:>8}")  # fmt: skip
        print(f"dynamic batching: {serve['speedup']}x the requests/s of unbatched serving "
              f"({_verdict(serve['speedup'], TARGETS['batching_speedup'], True)})")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="A trained hfmtl run of the GLUE tasks (default: train a short one).")
    parser.add_argument("--encoder", help="Encoder of the short training (default: configs/glue.yaml's).")
    parser.add_argument("--train-steps", type=int, default=10, help="Steps of the short training (default 10).")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="Which parts to run.")
    parser.add_argument("--inputs", type=int, default=256, help="GLUE inputs each arm answers (default 256).")
    parser.add_argument("--batch-size", type=int, default=32, help="Inputs per forward, every arm (default 32).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed rounds of every arm (default 3).")
    parser.add_argument("--warmup", type=int, help="Inputs each arm answers untimed first (default: a batch).")
    parser.add_argument("--clients", type=int, default=32, help="serve: concurrent clients (default 32).")
    parser.add_argument("--requests", type=int, default=512, help="serve: timed requests per arm (default 512).")
    parser.add_argument("--serve-warmup", type=int, default=64, help="serve: untimed requests first (default 64).")
    parser.add_argument("--max-batch-size", type=int, help="serve: the batched server's --max-batch-size.")
    parser.add_argument("--max-wait-ms", type=float, help="serve: the batched server's --max-wait-ms.")
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs" / "benchmarks" / "inference")
    parser.add_argument("--output-json", type=Path, help="Results file (default: OUTPUT_DIR/inference.json).")
    parser.add_argument(
        "--smoke", action="store_true", help="Tiny random encoder and tiny sizes, the training in this process (CI)."
    )
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
        args.train_steps = 2
    args.warmup = args.batch_size if args.warmup is None else args.warmup
    args.output_dir = args.output_dir.resolve()  # the training runs from the repository root
    args.output_json = args.output_json or args.output_dir / "inference.json"
    if min(args.inputs, args.batch_size, args.repeats, args.clients, args.requests) < 1:
        parser.error("--inputs, --batch-size, --repeats, --clients and --requests must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if args.model:
        model_dir, note = Path(args.model), "given with --model"
    else:
        encoder = args.encoder or (tiny_encoder(args.output_dir / "tiny_encoder") if args.smoke else None)
        model_dir = prepare_model(
            args.output_dir / "model_cache", encoder=encoder, steps=args.train_steps, in_process=args.smoke
        )
        note = (f"trained {args.train_steps} steps by this script: enough for throughput, which does not depend "
                "on how long the heads trained; not for its predictions")  # fmt: skip
    started = time.time()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine("cpu"),
        "versions": versions(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "targets": TARGETS,
        "model": str(model_dir),
        "model_note": note,
        # other processes on the cores slow small forward passes most: the reader sees if there were any
        "load_average_at_start": os.getloadavg()[0],
    }
    if {"tasks", "pipeline"} & set(args.parts):
        results["arms"] = measure_arms(args, model_dir)
    if "serve" in args.parts:
        results["serve"] = measure_serving(args, model_dir)
    results["wall_seconds"] = round(time.time() - started, 1)
    results["load_average_at_end"] = os.getloadavg()[0]
    print_report(results)
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(json.dumps(results, indent=2))
    print(f"\nevery measurement: {args.output_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
