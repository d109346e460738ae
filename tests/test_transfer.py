"""Transfer: `model.init_from` (encoder + matching heads from an earlier model) and staged runs
(`stages:`: each stage from the previous one's result, its own directory, metrics and resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TASK_CONFIGS, encode, make_config, run_recipe, write_config
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

from hfmtl import ConfigError, MultiTaskModel, load_config
from hfmtl.config import config_from_dict
from hfmtl.config.stages import plan_stages, stage_is_complete
from hfmtl.model.adapters import add_adapters
from hfmtl.model.transfer import initialize_from

RTE = {"type": "classification", "num_labels": 2, "id2label": {0: "entailment", 1: "not_entailment"}}
RTE_SPEC = {**RTE, "problem_type": "single_label_classification"}
STSB_SPEC = {"type": "regression", "num_labels": 1, "problem_type": "regression"}
NER_SPEC = {"type": "token_classification", "num_labels": 3, "id2label": {0: "O", 1: "B-PER", 2: "I-PER"}}


def perturbed(model: MultiTaskModel, seed: int) -> MultiTaskModel:
    """Move every weight away from its initial value, so that copies can be told apart."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


@pytest.fixture
def source_dir(tiny_encoder_dir, tmp_path) -> Path:
    """A saved hfmtl model (rte + stsb heads) whose weights differ from the tiny encoder's."""
    model = perturbed(MultiTaskModel.from_encoder(tiny_encoder_dir, {"rte": RTE_SPEC, "stsb": STSB_SPEC}), 1)
    model.save_pretrained(tmp_path / "source")
    return tmp_path / "source"


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- init_from --------------------------------------------------------------------------------------


def test_init_from_an_hfmtl_model_takes_its_encoder_and_the_heads_that_match(tiny_encoder_dir, source_dir):
    source = MultiTaskModel.from_pretrained(source_dir)
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, {"rte": RTE_SPEC, "ner": NER_SPEC})
    fresh_ner = state(model.heads["ner"])
    report = initialize_from(model, str(source_dir))

    assert_same(state(model.encoder), state(source.encoder))
    assert_same(state(model.heads["rte"]), state(source.heads["rte"]))
    assert_same(state(model.heads["ner"]), fresh_ner)  # no such task in the source: left as it was
    assert report["heads_loaded"] == ["rte"]
    assert report["heads_fresh"] == {"ner": "the source has no task of that name"}


def test_a_head_with_other_labels_starts_fresh_unless_the_user_asked_to_keep_it(tiny_encoder_dir, source_dir):
    relabelled = {**RTE_SPEC, "id2label": {0: "yes", 1: "no"}}
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, {"rte": relabelled})
    report = initialize_from(model, str(source_dir))
    assert report["heads_loaded"] == [] and "id2label differs" in report["heads_fresh"]["rte"]

    with pytest.raises(ConfigError, match="model.init_heads asks to keep the head of 'rte', but its id2label differs"):
        initialize_from(model, str(source_dir), keep_heads=["rte"])


def test_init_heads_none_and_a_list(tiny_encoder_dir, source_dir):
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, {"rte": RTE_SPEC, "stsb": STSB_SPEC})
    assert initialize_from(model, str(source_dir), keep_heads="none")["heads_loaded"] == []
    report = initialize_from(model, str(source_dir), keep_heads=["stsb"])
    assert report["heads_loaded"] == ["stsb"] and report["heads_fresh"] == {"rte": "not asked to keep it"}
    with pytest.raises(ConfigError, match="names 'ner', which is not a task of this run"):
        initialize_from(model, str(source_dir), keep_heads=["ner"])


def test_init_from_any_hf_model_takes_its_encoder(tiny_encoder_dir, tmp_path):
    config = BertConfig.from_pretrained(tiny_encoder_dir, num_labels=2)
    torch.manual_seed(3)
    classifier = BertForSequenceClassification(config)
    classifier.save_pretrained(tmp_path / "bert-cls")
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, {"rte": RTE_SPEC})
    report = initialize_from(model, str(tmp_path / "bert-cls"))
    expected = {k: v for k, v in classifier.bert.state_dict().items() if not k.startswith("pooler.")}
    assert_same(state(model.encoder), expected)
    assert report["heads_loaded"] == []


def test_init_from_another_architecture_is_a_clear_error(tiny_encoder_dir, tmp_path):
    from transformers import BertModel

    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(tmp_path / "narrow")
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, {"rte": RTE_SPEC})
    with pytest.raises(ConfigError, match=r"has a bert encoder with hidden_size=32, but the model .* hidden_size=64"):
        initialize_from(model, str(tmp_path / "narrow"))
    with pytest.raises(ConfigError, match="model.init_from='.*missing': the directory '.*missing' does not exist"):
        initialize_from(model, str(tmp_path / "missing"))


def test_init_from_a_shared_lora_model_takes_the_merged_encoder(tiny_encoder_dir, tmp_path):
    lora = MultiTaskModel.from_encoder(tiny_encoder_dir, {"rte": RTE_SPEC})
    add_adapters(lora, {"peft_type": "LORA", "r": 4, "target_modules": ["query", "value"]}, "shared", tiny_encoder_dir)
    with torch.no_grad():
        for name, param in lora.encoder.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    lora.save_pretrained(tmp_path / "lora")
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, {"rte": RTE_SPEC})
    initialize_from(model, str(tmp_path / "lora"))
    inputs = encode(tiny_encoder_dir, "this is a test")
    with torch.no_grad():
        expected = lora.eval()(task="rte", **inputs).logits
        got = model.eval()(task="rte", **inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


# --- stages: planning ------------------------------------------------------------------------------


def staged_config(encoder: str, output_dir: Path, **stage_overrides) -> dict:
    config = make_config(
        encoder,
        output_dir,
        {"stsb": TASK_CONFIGS["stsb"], "ner": TASK_CONFIGS["ner"], "rte": TASK_CONFIGS["rte"]},
        max_steps=4,
        eval_steps=2,
    )
    config["sampling"] = {"strategy": "weights", "weights": {"stsb": 1.0, "ner": 2.0, "rte": 1.0}}
    config["stages"] = {
        "source": {"tasks": ["stsb", "ner", "rte"], "train": {"max_steps": 6}},
        "target": {"tasks": ["rte"], "train": {"learning_rate": 1e-4, **stage_overrides}},
    }
    return config


def test_plan_stages_gives_each_stage_its_tasks_settings_directory_and_start(tmp_path):
    config = config_from_dict(staged_config("enc", tmp_path / "out"))
    source, target = plan_stages(config)
    assert (source.name, list(source.config.tasks), source.config.train.max_steps) == (
        "source",
        ["stsb", "ner", "rte"],
        6,
    )
    assert (target.name, list(target.config.tasks), target.config.train.max_steps) == ("target", ["rte"], 4)
    assert target.config.train.learning_rate == 1e-4 and source.config.train.learning_rate == 1e-3
    assert source.output_dir == tmp_path / "out" / "source" and target.output_dir == tmp_path / "out" / "target"
    assert source.config.model.init_from is None
    assert target.config.model.init_from == str(tmp_path / "out" / "source")
    assert target.config.sampling.weights == {"rte": 1.0}  # the run's weights, cut to the stage's tasks
    assert not source.skip and not target.skip


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["stages"]["target"].update(tasks=["mnli"]), "stages.target.tasks names unknown task 'mnli'"),
        (
            lambda c: c["stages"]["target"]["train"].update(max_steps=-1),
            "stages.target: train.max_steps=-1 must be > 0",
        ),
        (lambda c: c["stages"]["target"]["train"].update(output_dir="x"), "stages.target.train.output_dir is set for"),
        (lambda c: c["stages"]["target"].update(tasks=[]), "stages.target.tasks is empty"),
        (
            lambda c: c["stages"]["target"].update(steps=3),
            "stages.target.steps is not a key of stages.target; its keys are tasks, train, sampling, peft",
        ),
        (lambda c: c.update(stages=[]), "stages must be a mapping"),
    ],
)
def test_a_bad_stage_is_reported_before_anything_trains(edit, message, tmp_path):
    config = staged_config("enc", tmp_path / "out")
    edit(config)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        plan_stages(config_from_dict(config))


def _finish(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps({"history": [], "train": {"steps": 1}}))


def test_resume_latest_skips_finished_stages_and_resumes_the_interrupted_one(tmp_path):
    data = staged_config("enc", tmp_path / "out")
    data["train"]["resume_from_checkpoint"] = "latest"
    _finish(tmp_path / "out" / "source")
    (tmp_path / "out" / "target").mkdir()
    source, target = plan_stages(config_from_dict(data))
    assert source.skip and not target.skip
    assert target.config.train.resume_from_checkpoint == "latest"
    assert stage_is_complete(source.output_dir) and not stage_is_complete(target.output_dir)


def test_resume_from_a_checkpoint_of_a_later_stage_needs_the_earlier_ones_finished(tmp_path):
    data = staged_config("enc", tmp_path / "out")
    checkpoint = tmp_path / "out" / "target" / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    data["train"]["resume_from_checkpoint"] = str(checkpoint)
    with pytest.raises(ConfigError, match=r"is in stage 'target', but earlier stage\(s\) \['source'\] did not finish"):
        plan_stages(config_from_dict(data))
    _finish(tmp_path / "out" / "source")
    source, target = plan_stages(config_from_dict(data))
    assert source.skip and target.config.train.resume_from_checkpoint == str(checkpoint)
    data["train"]["resume_from_checkpoint"] = str(tmp_path)
    with pytest.raises(ConfigError, match="is not inside any stage's directory"):
        plan_stages(config_from_dict(data))


# --- stages: a real two-stage run --------------------------------------------------------------------


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_two_stage_run_trains_the_target_from_the_source_stage(tiny_encoder_dir, tmp_path):
    out = tmp_path / "out"
    # the target stage trains its head only, so its encoder must be exactly the source stage's
    cfg = write_config(tmp_path / "staged.yaml", staged_config(tiny_encoder_dir, out, freeze_encoder=True))
    trainer = run_recipe(cfg)

    for stage in ("source", "target"):
        assert (out / stage / "model.safetensors").is_file() and stage_is_complete(out / stage)
    assert list(MultiTaskModel.from_pretrained(out / "target").config.tasks) == ["rte"]
    source_weights = load_file(str(out / "source" / "model.safetensors"))
    target_weights = load_file(str(out / "target" / "model.safetensors"))
    encoder_keys = [k for k in target_weights if k.startswith("encoder.")]
    assert encoder_keys and all(torch.equal(source_weights[k], target_weights[k]) for k in encoder_keys)
    # the rte head started from the source stage's and then trained on
    assert not torch.equal(source_weights["heads.rte.out_proj.weight"], target_weights["heads.rte.out_proj.weight"])
    # each stage's train.log holds that whole stage (from its first line) and nothing of the other
    target_log, source_log = (out / "target" / "train.log").read_text(), (out / "source" / "train.log").read_text()
    assert "=== stage 'target'" in target_log and "heads kept: ['rte']" in target_log
    assert "=== stage 'source'" in source_log and "stage 'target'" not in source_log

    summary = json.loads((out / "metrics.json").read_text())
    assert list(summary["stages"]) == ["source", "target"] and summary["final_model"] == str(out / "target")
    assert [e["step"] for e in summary["stages"]["source"]["history"]] == [2, 4, 6]
    assert set(summary["stages"]["target"]["history"][-1]) >= {"eval/rte/accuracy", "eval/mean"}
    assert trainer.state.global_step == 4

    # a resume of a finished run trains nothing and leaves the models as they are
    assert run_recipe(cfg, "train.resume_from_checkpoint=latest") is None
    assert load_file(str(out / "target" / "model.safetensors")).keys() == target_weights.keys()


def test_staged_configs_in_the_repository_load(tmp_path):
    stages = plan_stages(load_config("configs/rte_transfer.yaml", [f"train.output_dir={tmp_path}"]))
    assert [s.name for s in stages] == ["intermediate", "target"]
    assert list(stages[1].config.tasks) == ["rte"]
