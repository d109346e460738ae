"""A real two-process run of the training recipe on CPU (gloo DDP), and checks that it is one run.

`accelerate launch --cpu --num_processes 2` silently starts ONE process on a machine without GPUs;
`--multi_gpu --num_processes 2` with the Accelerator created with `cpu=True` (the recipe's `--cpu`)
starts two gloo ranks. Each rank writes what it saw; the test checks there were two ranks, that every
rank drew the same task at every step, and that the parameters are identical on both at the end.
"""

from __future__ import annotations

import json

import pytest
from conftest import REPO_ROOT, TASK_CONFIGS, make_config, write_config
from launching import accelerate_launch

from hfmtl.training.checkpointing import list_checkpoints
from hfmtl.training.manifest import verify_checkpoint

pytestmark = pytest.mark.slow

WORKER = """
import hashlib, json, runpy, sys
from pathlib import Path

import torch

from hfmtl.training.callbacks import TrainerCallback

drawn = []


class RecordTasks(TrainerCallback):
    def on_step_end(self, trainer, step, task_names):
        drawn.append(task_names)


recipe = runpy.run_path(sys.argv[1], run_name="recipe")
trainer = recipe["run"](recipe["parse_args"](sys.argv[2:]), callbacks=[RecordTasks()])
acc = trainer.accelerator
model = acc.unwrap_model(trainer.model)
digest = hashlib.sha256()
state = dict(model.state_dict())
balancer = trainer.runner.balancer
if balancer is not None:  # learned loss weights and strategy state must agree across ranks too
    state.update({f"balancer.{k}": v for k, v in balancer.state_dict().items() if torch.is_tensor(v)})
for name, param in sorted(state.items()):
    digest.update(name.encode())
    digest.update(param.detach().cpu().contiguous().numpy().tobytes())
record = {
    "rank": acc.process_index,
    "world": acc.num_processes,
    "backend": acc.state.backend,
    "distributed_type": str(acc.distributed_type),
    "params": digest.hexdigest(),
    "tasks": drawn,
    "batches": trainer.state.positions,
}
out = Path(trainer.args.output_dir) / f"rank{acc.process_index}.json"
out.write_text(json.dumps(record))
"""


INPUT_GROUP = [
    "tasks.ner.input_group=conll",
    "tasks.pos.type=token_classification",
    f"tasks.pos.data_files={json.dumps(TASK_CONFIGS['ner']['data_files'])}",
    "tasks.pos.tags_column=pos_tags",
    "tasks.pos.input_group=conll",
    "tasks.pos.max_train_samples=64",
    "tasks.pos.max_eval_samples=32",
]
# Each variant is the plain 3-task run plus a feature; the plain run itself is the DDP contract's
# (tests/test_ddp.py), and gradual_unfreezing differs from it only in its first 2 steps.
VARIANTS = {
    # per-task LoRA: every rank must switch adapters in step, and DDP must sync adapters that were
    # inactive on some steps (they stay registered as trainable)
    "lora_per_task": [
        "peft.mode=per_task",
        "peft.config.peft_type=LORA",
        "peft.config.r=4",
        "peft.config.target_modules=[query,value]",
        "train.layerwise_lr_decay=0.8",
    ],
    # gradual unfreezing drops the gradients of frozen groups after the all-reduce, on every rank alike
    "gradual_unfreezing": ["train.gradual_unfreezing_steps=2", "train.freeze_embeddings=true"],
    # every task per step, PCGrad on the per-task gradients of the LoRA parameters (averaged over the
    # ranks before combining), with gradient accumulation
    "pcgrad_lora_accumulation": [
        "balancing.step=all_tasks",
        "balancing.method=pcgrad",
        "peft.mode=shared",
        "peft.config.peft_type=LORA",
        "peft.config.r=4",
        "peft.config.target_modules=[query,value]",
        "train.gradient_accumulation_steps=2",
    ],
    # a learned weighting outside the DDP-wrapped model: its gradients are averaged by hand
    "uncertainty_all_tasks": ["balancing.step=all_tasks", "balancing.method=uncertainty"],
    # NER and POS of the same CoNLL rows as one input group: one encoder pass per group step, its batches
    # sharded like any task's; with a loss weighting in the one-task step, and with PCGrad on every task's
    # gradient from the shared pass
    "input_group": [*INPUT_GROUP, "balancing.method=initial_loss", "train.gradient_accumulation_steps=2"],
    "input_group_pcgrad": [*INPUT_GROUP, "balancing.step=all_tasks", "balancing.method=pcgrad"],
}
ALL_TASKS = {"pcgrad_lora_accumulation", "uncertainty_all_tasks", "input_group_pcgrad"}
GROUPED = {"input_group", "input_group_pcgrad"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_two_process_cpu_run_stays_in_lockstep(variant, tiny_encoder_dir, tmp_path):
    out = tmp_path / "out"
    tasks = {"rte": TASK_CONFIGS["rte"], "ner": TASK_CONFIGS["ner"], "stsb": TASK_CONFIGS["stsb"]}
    cfg = write_config(
        tmp_path / "run.yaml",
        make_config(tiny_encoder_dir, out, tasks, max_steps=8, eval_steps=4, save_steps=4),
    )
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    proc = accelerate_launch(
        [worker, REPO_ROOT / "recipes" / "train.py", "--cpu", "--config", cfg, *VARIANTS[variant]], multi_gpu=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    records = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in records] == [0, 1]
    assert all(r["world"] == 2 and r["backend"] == "gloo" and "MULTI_CPU" in r["distributed_type"] for r in records)
    assert len(records[0]["tasks"]) == 8  # the tasks of every step, the same on both ranks
    if variant not in ALL_TASKS | GROUPED:  # one sampled task per step
        assert all(len(task_names) == 1 for task_names in records[0]["tasks"])
    if variant == "input_group":  # the group's steps train both of its tasks
        assert ["ner", "pos"] in records[0]["tasks"]
    if variant == "input_group_pcgrad":
        assert all(task_names == ["rte", "ner", "pos", "stsb"] for task_names in records[0]["tasks"])
    if variant in GROUPED:  # one position in the data for the group
        assert set(records[0]["batches"]) == {"rte", "conll", "stsb"}
    assert records[0]["tasks"] == records[1]["tasks"]
    assert records[0]["batches"] == records[1]["batches"]
    assert records[0]["params"] == records[1]["params"]  # DDP kept the replicas identical
    for checkpoint in list_checkpoints(out):  # whole, with the RNG state of both ranks in its manifest
        manifest = verify_checkpoint(checkpoint)
        assert manifest.num_processes == 2 and {"random_states_0.pkl", "random_states_1.pkl"} <= set(manifest.files)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["step"] for e in metrics["history"]] == [4, 8]
    # evaluation gathered every eval example once from both ranks: accuracy is a multiple of 1/32
    accuracy = metrics["history"][-1]["eval/rte/accuracy"]
    assert abs(accuracy * 32 - round(accuracy * 32)) < 1e-9
    saved = json.loads((out / "config.json").read_text())
    if variant == "lora_per_task":  # the adapters were really there, and saved without the base weights
        assert saved["peft"]["adapters"] == ["rte", "ner", "stsb"] and not (out / "model.safetensors").exists()
    if variant == "gradual_unfreezing":
        assert "frozen:" in (out / "train.log").read_text()
