"""Model cards and `hfmtl push`: the card's metadata passes huggingface_hub's own parsing and a
Hub-like validation, its numbers are those of metrics.json, its usage snippet runs, and a push sends
exactly the saved model's files (never the token) to a local stand-in for the Hub on 127.0.0.1."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers
import yaml
from conftest import REPO_ROOT, TASK_CONFIGS, make_config, run_recipe, write_config
from fake_hub import FakeHub, check_card_metadata
from huggingface_hub import ModelCard, ModelCardData, constants, metadata_load
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

from hfmtl import HfmtlError, MultiTaskModel, cli
from hfmtl.config import config_from_dict, save_config
from hfmtl.model.adapters import add_adapters
from hfmtl.publish import hub
from hfmtl.publish.callbacks import HubPushCallback, snapshot_best
from hfmtl.publish.model_card import GENERATED_MARKER, build_model_card, write_model_card

TOKEN = "hf_hfmtlTestToken0123456789abcdefXYZ"  # recognisable, and fake
REPO = "tester/tiny-mtl"
HEADS = {
    "rte": {
        "type": "classification",
        "num_labels": 2,
        "id2label": {0: "entailment", 1: "not_entailment"},
        "problem_type": "single_label_classification",
    },
    "stsb": {"type": "regression", "num_labels": 1, "problem_type": "regression"},
    "ner": {
        "type": "token_classification",
        "num_labels": 9,
        "id2label": dict(enumerate(TASK_CONFIGS["ner"]["label_names"])),
    },
    "copa": {"type": "multiple_choice", "num_labels": 1},
    "squad": {"type": "question_answering", "num_labels": 2},
}
# Two evaluations; the best (by eval/mean) is the first, and the last has a NaN (a constant prediction).
HISTORY = [
    {
        "step": 5,
        "epoch": 0.1,
        "eval/rte/accuracy": 0.625,
        "eval/rte/f1": 0.5,
        "eval/stsb/pearson": 0.25,
        "eval/stsb/spearman": 0.125,
        "eval/ner/f1": 0.375,
        "eval/copa/accuracy": 0.5,
        "eval/squad/exact_match": 0.0625,
        "eval/squad/f1": 0.1875,
        "eval/mean": 0.4,
    },
    {
        "step": 10,
        "epoch": 0.2,
        "eval/rte/accuracy": 0.5,
        "eval/rte/f1": 0.25,
        "eval/stsb/pearson": float("nan"),
        "eval/stsb/spearman": 0.0,
        "eval/ner/f1": 0.25,
        "eval/copa/accuracy": 0.75,
        "eval/squad/exact_match": 0.0,
        "eval/squad/f1": 0.0625,
        "eval/mean": 0.3,
    },
]
LORA = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}


def save_run(model: MultiTaskModel, tokenizer, out: Path, run: dict, metrics: dict | None) -> Path:
    """What a training leaves in its output_dir: model, tokenizer, config.yaml, metrics.json."""
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_config(config_from_dict(run), out / "config.yaml")
    if metrics is not None:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return out


@pytest.fixture(scope="module")
def saved(tiny_encoder_dir, tmp_path_factory) -> dict[str, Path]:
    """A full model with one task of each type, and a LoRA one, saved as a training saves them."""
    root = tmp_path_factory.mktemp("hub-models")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_encoder_dir)
    metrics = {"history": HISTORY, "best": {"step": 5, "eval/mean": 0.4}, "main_metrics": {}, "train": {"steps": 10}}
    dirs = {}
    for name in ("plain", "lora"):
        torch.manual_seed(0)
        model = MultiTaskModel.from_encoder(tiny_encoder_dir, copy.deepcopy(HEADS))
        run = make_config(tiny_encoder_dir, root / name, TASK_CONFIGS)
        if name == "lora":
            run["peft"] = {"mode": "per_task", "config": LORA}
            add_adapters(model, LORA, "per_task", base_model=tiny_encoder_dir)
        dirs[name] = save_run(model, tokenizer, root / name, run, metrics)
    return dirs


@pytest.fixture
def plain(saved, tmp_path) -> Path:
    """A private copy of the full model, for tests that add or change files."""
    return Path(shutil.copytree(saved["plain"], tmp_path / "plain"))


def card_only_copy(source: Path, target: Path, config_json=None, run=None, metrics=None) -> Path:
    """The files a card is built from (no weights), optionally edited."""
    target.mkdir(parents=True)
    for name, edit in (("config.json", config_json), ("config.yaml", run), ("metrics.json", metrics)):
        if not (source / name).is_file():
            continue
        text = (source / name).read_text()
        data = yaml.safe_load(text) if name.endswith("yaml") else json.loads(text)
        if edit is not None:
            edit(data)
        (target / name).write_text(yaml.safe_dump(data) if name.endswith("yaml") else json.dumps(data))
    return target


@pytest.fixture
def fake_hub(monkeypatch):
    """The stand-in Hub, with huggingface_hub pointed at it and allowed online for this test only."""
    with FakeHub(token=TOKEN) as server:
        # huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE into `constants` at import time; HfApi()
        # (built by each push) and ModelCard.validate read the module attributes when called.
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield server
        assert server.unexpected == []


def all_bytes(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


# --- the card ------------------------------------------------------------------------------------------


def test_card_metadata_passes_huggingface_hub_parsing_and_validation(saved, tmp_path):
    card = build_model_card(saved["plain"], repo_id=REPO)
    text = str(card)
    meta = ModelCard(text).data.to_dict()  # parses the YAML block, ModelCardData, model-index -> EvalResults
    assert meta["library_name"] == "hfmtl"
    assert meta["tags"] == [
        "hfmtl",
        "multi-task",
        "classification",
        "regression",
        "token_classification",
        "multiple_choice",
        "question_answering",
    ]
    assert "pipeline_tag" not in meta  # five task types, no single pipeline
    for unknown in ("language", "license", "base_model", "datasets"):  # not in any saved file: not guessed
        assert unknown not in meta
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "tiny-mtl"
    assert eval_results_to_model_index(name, results) == meta["model-index"]
    ModelCardData(**copy.deepcopy(meta))  # the dict round-trips through the metadata class
    assert check_card_metadata(text) == []  # the fake Hub's validate-yaml rules, run offline
    # the README written to disk is read back by metadata_load to the same metadata
    (tmp_path / "README.md").write_text(text)
    assert metadata_load(tmp_path / "README.md") == meta
    assert text.splitlines()[0] == "---" and GENERATED_MARKER in text


@pytest.mark.parametrize("load_best", [True, False])
def test_model_index_has_one_result_per_task_and_metric_of_the_saved_evaluation(saved, tmp_path, load_best):
    def set_load_best(run):
        run["train"]["load_best_model_at_end"] = load_best

    model_dir = card_only_copy(saved["plain"], tmp_path / "m", run=set_load_best)
    meta = build_model_card(model_dir, repo_id=REPO).data.to_dict()
    _, results = model_index_to_eval_results(meta["model-index"])
    entry = HISTORY[0] if load_best else HISTORY[-1]  # the best step's evaluation, else the last
    expected = {
        (key.split("/")[1], key.split("/")[2]): value
        for key, value in entry.items()
        if key.startswith("eval/") and key != "eval/mean" and math.isfinite(value)  # a NaN is not reported
    }
    got = {(r.task_name.split(" ")[0], r.metric_type): r.metric_value for r in results}
    assert got == expected
    assert len(results) == len(expected)
    by_task = {r.task_name.split(" ")[0]: r for r in results}
    assert by_task["ner"].task_type == "token-classification" and by_task["stsb"].task_type == "text-classification"
    assert {r.dataset_split for r in results} == {"validation"}
    assert len(meta["model-index"][0]["results"]) == len(HEADS)  # one result per task
    text = str(build_model_card(model_dir, repo_id=REPO))
    assert f"evaluation at step {entry['step']} of 10" in text


def test_base_model_only_when_it_is_a_hub_id(saved, tmp_path):
    # a local encoder (an absolute path here; a relative ../ path below) is named in the text, not the metadata
    card = build_model_card(saved["plain"], repo_id=REPO)
    assert card.data.base_model is None
    assert "(a local directory, not a Hub model id)" in card.text

    def encoder(name):
        def edit(run):
            run["model"]["name_or_path"] = name

        return edit

    relative = card_only_copy(saved["plain"], tmp_path / "rel", run=encoder("../shared/models/all-MiniLM-L6-v2"))
    assert build_model_card(relative).data.base_model is None
    hub_encoder = card_only_copy(saved["plain"], tmp_path / "hub", run=encoder("google-bert/bert-base-uncased"))
    assert build_model_card(hub_encoder).data.base_model == "google-bert/bert-base-uncased"
    # the caller may name the Hub id of a local copy; it must be an id, never a path
    given = build_model_card(saved["plain"], base_model="sentence-transformers/all-MiniLM-L6-v2", license="mit")
    assert given.data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and given.data.license == "mit"
    with pytest.raises(HfmtlError, match="not a Hub model id"):
        build_model_card(saved["plain"], base_model="../shared/models/all-MiniLM-L6-v2")


def test_hub_datasets_are_listed_and_name_their_model_index_results(saved, tmp_path):
    def glue_rte(run):
        run["tasks"]["rte"].update(dataset="nyu-mll/glue", subset="rte", data_files=None)

    meta = build_model_card(card_only_copy(saved["plain"], tmp_path / "m", run=glue_rte), language=["en"]).data
    assert meta.datasets == ["nyu-mll/glue"] and meta.language == ["en"]
    rte = [r for r in meta.eval_results if r.task_name.startswith("rte ")]
    assert {(r.dataset_type, r.dataset_config, r.dataset_split) for r in rte} == {("nyu-mll/glue", "rte", "validation")}
    stsb = [r for r in meta.eval_results if r.task_name.startswith("stsb ")]
    assert {r.dataset_type for r in stsb} == {"stsb"}  # local files: no Hub id, named after the task


def test_one_task_type_sets_the_pipeline_tag(saved, tmp_path):
    def only_ner(config):
        config["tasks"] = {"ner": config["tasks"]["ner"]}

    meta = build_model_card(card_only_copy(saved["plain"], tmp_path / "ner", config_json=only_ner)).data
    assert meta.pipeline_tag == "token-classification"
    assert "multi-task" not in meta.tags  # one task


def test_peft_card_names_its_base(saved, tmp_path):
    card = build_model_card(saved["lora"], repo_id=REPO)
    assert card.data.tags[-2:] == ["peft", "lora"]
    assert card.data.base_model is None  # the base is a local directory
    assert (
        f"Loading needs the base encoder at `{json.loads((saved['lora'] / 'config.json').read_text())['peft']['base_model']}`"
        in card.text
    )
    assert "PEFT (per_task mode" in card.text

    def hub_base(config):
        config["peft"]["base_model"] = "google-bert/bert-base-uncased"

    card = build_model_card(card_only_copy(saved["lora"], tmp_path / "hub", config_json=hub_base))
    assert card.data.base_model == "google-bert/bert-base-uncased"
    assert card.data["base_model_relation"] == "adapter"
    assert "Loading needs" not in card.text


def test_a_staged_run_card_lists_its_stages_and_the_root_is_refused(saved, tmp_path):
    root = tmp_path / "run"

    def stage(name, init_from):
        def edit(run):
            run["train"]["output_dir"] = str(root / name)
            run["model"]["init_from"] = init_from

        return edit

    card_only_copy(saved["plain"], root / "intermediate", run=stage("intermediate", None))
    target = card_only_copy(saved["plain"], root / "target", run=stage("target", str(root / "intermediate")))
    text = build_model_card(target).text
    assert "1. `intermediate`: " in text and "2. `target` (this model): " in text
    (root / "metrics.json").write_text(json.dumps({"stages": {}, "final_model": str(target)}))
    with pytest.raises(HfmtlError, match="root of a staged run; use its final model"):
        build_model_card(root)


def test_card_says_what_each_step_trained_and_what_the_run_used(saved, tmp_path):
    def all_tasks_pcgrad(run):
        run["balancing"] = {"step": "all_tasks", "method": "pcgrad", "options": {}, "tasks_per_step": None}

    def used(metrics):
        metrics["train"].update(mixed_precision="bf16", torch_compile="inductor", num_processes=2)
        metrics["greater_is_better"] = {"eval/rte/accuracy": True, "eval/stsb/pearson": True, "eval/mean": True}

    card = build_model_card(card_only_copy(saved["plain"], tmp_path / "a", run=all_tasks_pcgrad, metrics=used)).text
    assert "- Each optimizer step trained every task, a batch of each, balanced by `pcgrad`." in card
    assert "one task per optimizer step" not in card
    assert "- Mixed precision: bf16; compiled with torch.compile (inductor); 2 processes." in card
    assert "accuracy ↑ 0.6250" in card and "pearson ↑ 0.2500" in card

    default = build_model_card(saved["plain"]).text
    assert "one task per optimizer step" in default and "Each optimizer step" not in default
    assert "Input groups" not in default

    def grouped(run):
        for name in ("rte", "stsb"):
            run["tasks"][name]["input_group"] = "pairs"

    card = build_model_card(card_only_copy(saved["plain"], tmp_path / "b", run=grouped)).text
    assert (
        "- Input groups (a batch of a group's rows encoded once for all of its tasks, the group drawn as one "
        "unit): `rte` in `pairs`, `stsb` in `pairs`." in card
    )
    assert "Mixed precision: as the launcher set it (not recorded)" in default  # metrics.json has no record


@pytest.mark.parametrize(
    ("train", "text"),
    [
        ({"warmup_steps": 0.1}, "warmup ratio 0.1"),
        ({"warmup_steps": 40.0}, "40 warmup steps"),
        # config.yaml saved before transformers 5's names: warmup_steps > 0 won over warmup_ratio
        ({"warmup_steps": 0, "warmup_ratio": 0.06}, "warmup ratio 0.06"),
        ({"warmup_steps": 40, "warmup_ratio": 0.06}, "40 warmup steps"),
    ],
)
def test_card_states_the_warmup_of_new_and_old_configs(saved, tmp_path, train, text):
    def warmup(run):
        run["train"].update(train)

    card = build_model_card(card_only_copy(saved["plain"], tmp_path / "card", run=warmup)).text
    assert f"(linear schedule, {text}), batch size" in card


def test_usage_snippet_runs_against_the_saved_model(saved, tmp_path, capsys):
    for name, model_dir in saved.items():
        text = build_model_card(model_dir, repo_id=REPO).text
        code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
        assert REPO in code
        exec(compile(code.replace(REPO, str(model_dir)), f"<{name} card>", "exec"), {})
        printed = capsys.readouterr().out
        for task_name in HEADS:
            assert re.search(rf"^{task_name} ", printed, re.M), (name, task_name, printed)
    # the export command of the card works too, on the model it was written for
    command = re.search(r"```bash\nhfmtl (export .*)\n", text).group(1).replace(REPO, str(saved["plain"]))
    argv = command.replace("--out rte-model", f"--out {tmp_path / 'rte-model'}").split()
    assert cli.main(argv) == 0
    assert transformers.pipeline("text-classification", model=str(tmp_path / "rte-model"))("A moving film.")


def test_write_model_card_replaces_its_own_card_and_keeps_a_hand_written_one(plain, caplog):
    path = write_model_card(plain, repo_id=REPO)
    assert path == plain / "README.md" and GENERATED_MARKER in path.read_text()
    assert not list(plain.glob("*.tmp"))
    path.write_text("---\nlicense: mit\n---\n# My own words\n")
    write_model_card(plain, repo_id=REPO)
    assert path.read_text().endswith("# My own words\n") and "not generated by hfmtl" in caplog.text
    write_model_card(plain, repo_id=REPO, overwrite=True)
    assert GENERATED_MARKER in path.read_text()


# --- what is uploaded ----------------------------------------------------------------------------------


def test_files_to_upload_leave_out_checkpoints_logs_temporaries_and_hidden_files(saved, plain):
    for extra in (
        "checkpoints/checkpoint-5/optimizer.bin",
        "best/model.safetensors",
        "best.tmp/config.json",
        "metrics.json.tmp",
        "train.log",
        "hfmtl/events.out.tfevents.1.host",
        ".env",
        "adapters/.ipynb_checkpoints/x.json",
    ):
        (plain / extra).parent.mkdir(parents=True, exist_ok=True)
        (plain / extra).write_text("x")
    write_model_card(plain, repo_id=REPO)
    expected = ["README.md", "config.json", "config.yaml", "metrics.json", "model.safetensors"]
    assert hub.files_to_upload(plain) == [*expected, "tokenizer.json", "tokenizer_config.json"]
    lora = hub.files_to_upload(saved["lora"])
    assert "heads.safetensors" in lora and "model.safetensors" not in lora  # adapters and heads only
    assert {f for f in lora if f.startswith("adapters/")} == {
        f"adapters/{task}/{file}" for task in HEADS for file in ("adapter_config.json", "adapter_model.safetensors")
    }  # PEFT's template README.md files are left out


def test_push_sends_exactly_the_saved_files_and_never_the_token(plain, fake_hub):
    (plain / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (plain / "checkpoints" / "checkpoint-5" / "optimizer.bin").write_bytes(b"state")
    (plain / "train.log").write_text("step 5: loss 0.1\n")
    url = hub.push_to_hub(plain, REPO, private=True, card_data={"license": "apache-2.0"})
    commit = fake_hub.commits[-1]
    assert url == f"{fake_hub.url}/{REPO}/commit/{commit.oid}"
    assert fake_hub.repos[REPO].private
    # byte for byte the saved folder, minus the ignored files, README.md (written first) included
    local = all_bytes(plain)
    assert fake_hub.files(REPO) == {f: local[f] for f in hub.files_to_upload(plain)}
    assert set(local) - set(fake_hub.files(REPO)) == {"checkpoints/checkpoint-5/optimizer.bin", "train.log"}
    assert fake_hub.validated == [local["README.md"].decode()]  # upload_folder validated the card
    assert ModelCard(local["README.md"].decode()).data.license == "apache-2.0"
    assert commit.summary == "Upload hfmtl model (tasks: copa, ner, rte, squad, stsb)"
    # the token went in the Authorization header of the writes, and nowhere else
    writes = [r for r in fake_hub.requests if r.method == "POST" and "validate-yaml" not in r.path]
    assert writes and all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in writes)
    assert not any(TOKEN.encode() in r.body for r in fake_hub.requests)
    assert not any(TOKEN.encode() in data for data in fake_hub.files(REPO).values())
    assert not any(TOKEN.encode() in data for data in all_bytes(plain).values())
    # pushing again updates the same repo
    hub.push_to_hub(plain, REPO, commit_message="again")
    assert fake_hub.commits[-1].summary == "again" and len(fake_hub.repos) == 1


def test_push_to_a_branch_or_as_a_pull_request(saved, fake_hub, caplog):
    hub.push_to_hub(saved["lora"], REPO, revision="adapters-v1")
    assert "is a PEFT model on the local base" in caplog.text  # users of the repo need that base too
    assert fake_hub.commits[-1].revision == "adapters-v1"
    assert fake_hub.files(REPO) == {}  # main is untouched
    assert set(fake_hub.files(REPO, "adapters-v1")) == set(hub.files_to_upload(saved["lora"]))
    url = hub.push_to_hub(saved["lora"], "tiny-mtl", create_pr=True)  # no namespace: the user's own
    assert url == f"{fake_hub.url}/{REPO}/discussions/1" and fake_hub.commits[-1].revision == "refs/pr/1"
    with pytest.raises(HfmtlError, match="drop --revision or --create-pr"):
        hub.push_to_hub(saved["lora"], REPO, revision="dev", create_pr=True)


def test_model_card_validate_needs_the_hub_and_passes_through_it(saved, fake_hub, monkeypatch):
    card = build_model_card(saved["plain"], repo_id=REPO, license="apache-2.0")
    card.validate()  # POST {ENDPOINT}/api/validate-yaml
    assert fake_hub.validated == [str(card)]
    broken = ModelCard(str(card).replace("library_name: hfmtl", "library_name: hfmtl\npipeline_tag: nonsense"))
    with pytest.raises(ValueError, match="not a pipeline type"):
        broken.validate()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineModeIsEnabled):
        card.validate()


def test_push_errors_are_one_line(saved, plain, tmp_path, fake_hub, monkeypatch):
    foreign = tmp_path / "bert"
    transformers.BertConfig().save_pretrained(foreign)
    unfinished = card_only_copy(saved["plain"], tmp_path / "unfinished")
    cases = [
        (lambda: hub.push_to_hub(tmp_path / "missing", REPO), "does not exist"),
        (lambda: hub.push_to_hub(foreign, REPO), "holds a 'bert' model, not an hfmtl"),
        (lambda: hub.push_to_hub(unfinished, REPO), "has config.json but no weights"),
        (lambda: hub.push_to_hub(plain, "not a repo"), "is not valid: use namespace/name"),
    ]
    for push, message in cases:
        with pytest.raises(HfmtlError, match=message) as raised:
            push()
        assert "\n" not in str(raised.value)
    assert fake_hub.requests == []  # all refused before any request
    (plain / "notes.txt").write_text(f"my token is {TOKEN}\n")
    with pytest.raises(HfmtlError, match="notes.txt contains your Hub token"):
        hub.push_to_hub(plain, REPO)
    (plain / "notes.txt").unlink()
    server_side = [
        ("create", 403, "may not write to"),
        ("preupload", 500, "the Hub refused the push"),
        ("validate", 400, "the Hub rejected the metadata of README.md"),
    ]
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda seconds: None)  # 5xx are retried
    for route, status, message in server_side:
        fake_hub.fail = {route: status}
        with pytest.raises(HfmtlError, match=message) as raised:
            hub.push_to_hub(plain, REPO)
        assert "\n" not in str(raised.value)
    fake_hub.fail = {}
    monkeypatch.setenv("HF_TOKEN", "hf_notTheRightTokenAtAll000000")
    with pytest.raises(HfmtlError, match="did not accept your credentials"):
        hub.push_to_hub(plain, REPO)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HfmtlError, match="HF_HUB_OFFLINE=1 is set"):
        hub.push_to_hub(plain, REPO)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as closed:  # a port where nothing listens
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HfmtlError, match="cannot reach the Hub at http://127.0.0.1") as raised:
        hub.push_to_hub(plain, REPO)
    assert "\n" not in str(raised.value)


# --- the command line, a subprocess, and pushes from a training ----------------------------------------


def run_push_cli(argv: list[str]) -> tuple[int, str]:
    """`hfmtl push ...` through the console script's entry point, in this process."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        return cli.main(argv), out.getvalue()


def test_cli_push_dry_run_then_push(plain, fake_hub):
    status, out = run_push_cli(["push", str(plain), REPO, "--dry-run", "--license", "apache-2.0"])
    assert status == 0 and out.split() == hub.files_to_upload(plain)
    assert fake_hub.requests == [] and "license: apache-2.0" in (plain / "README.md").read_text()
    argv = ["push", str(plain), REPO, "--private", "--revision", "v1", "--commit-message", "first", "--language", "en"]
    status, out = run_push_cli(argv)
    assert status == 0 and out.startswith(f"pushed {plain} to {fake_hub.url}/{REPO}/commit/")
    assert fake_hub.commits[-1].summary == "first" and fake_hub.commits[-1].revision == "v1"
    assert ModelCard(fake_hub.files(REPO, "v1")["README.md"].decode()).data.language == ["en"]


def test_push_in_a_subprocess_configured_by_environment_variables(saved, tmp_path):
    """What a user runs: HF_ENDPOINT and HF_TOKEN in the environment, read at import time."""
    model_dir = Path(shutil.copytree(saved["lora"], tmp_path / "lora"))
    with FakeHub(token=TOKEN) as server:
        env = {
            **os.environ,
            "HF_ENDPOINT": server.url,
            "HF_HUB_OFFLINE": "0",
            "HF_TOKEN": TOKEN,
            "NO_PROXY": "127.0.0.1,localhost",
            "PYTHONPATH": str(REPO_ROOT),
        }
        result = subprocess.run(
            [sys.executable, "-m", "hfmtl.cli", "push", str(model_dir), REPO],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert server.unexpected == []
        assert server.files(REPO) == {f: (model_dir / f).read_bytes() for f in hub.files_to_upload(model_dir)}
        assert TOKEN not in result.stdout + result.stderr


def test_a_best_model_snapshot_pushes_as_training_in_progress(saved, tmp_path, fake_hub, tiny_encoder_dir):
    """What the Hub callback does at each new best (hub_strategy: best): snapshot best/, push it."""
    output_dir = tmp_path / "run"
    (output_dir / "best").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):  # what the trainer writes into best/
        shutil.copy2(saved["plain"] / name, output_dir / "best" / name)
    shutil.copy2(saved["plain"] / "config.yaml", output_dir / "config.yaml")
    in_progress = {"history": HISTORY[:1], "best": {"step": 5, "metric": "eval/mean", "value": 0.4}}
    (output_dir / "metrics.json").write_text(json.dumps(in_progress))
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_encoder_dir)
    callback = HubPushCallback(SimpleNamespace(hub_model_id=REPO, hub_private_repo=False, hub_strategy="best"))
    url = callback._push_snapshot(snapshot_best(output_dir, tokenizer), step=5)
    assert url.startswith(f"{fake_hub.url}/{REPO}/commit/")
    files = fake_hub.files(REPO)
    assert files["model.safetensors"] == (saved["plain"] / "model.safetensors").read_bytes()
    assert {"tokenizer.json", "config.yaml", "metrics.json", "README.md"} <= set(files)
    assert "training in progress" in files["README.md"].decode()
    assert fake_hub.commits[-1].summary == "Training in progress: best model at step 5"
    assert sorted(p.name for p in output_dir.iterdir()) == ["best", "config.yaml", "metrics.json"]  # no snapshot left
    with pytest.raises(HfmtlError, match="holds no model"):
        snapshot_best(tmp_path, tokenizer)


def test_push_model_from_memory(tiny_encoder_dir, fake_hub):
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, {"ner": copy.deepcopy(HEADS["ner"])})
    add_adapters(model, LORA, "shared", base_model=tiny_encoder_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_encoder_dir)
    hub.push_to_hub(model, REPO, tokenizer=tokenizer)
    files = fake_hub.files(REPO)
    assert {"config.json", "heads.safetensors", "adapters/adapter_model.safetensors", "tokenizer.json"} <= set(files)
    card = ModelCard(files["README.md"].decode())
    assert card.data.pipeline_tag == "token-classification" and "No run config" in card.text


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_training_with_push_to_hub_uploads_each_best_model_and_the_final_one(tiny_encoder_dir, tmp_path, fake_hub):
    out = tmp_path / "run"
    tasks = {"rte": TASK_CONFIGS["rte"], "stsb": TASK_CONFIGS["stsb"]}
    config = make_config(tiny_encoder_dir, out, tasks, max_steps=6, eval_steps=2)
    config["train"].update(push_to_hub=True, hub_model_id=REPO, hub_strategy="best")
    run_recipe(write_config(tmp_path / "run.yaml", config))

    summaries = [c.summary for c in fake_hub.commits]
    assert summaries[0].startswith("Training in progress: best model at step 2")
    assert len(summaries) >= 2 and not summaries[-1].startswith("Training in progress")
    # the repo ends with exactly the saved model directory's uploadable files, card included
    assert fake_hub.files(REPO) == {f: (out / f).read_bytes() for f in hub.files_to_upload(out)}
    assert "README.md" in hub.files_to_upload(out) and "training in progress" not in (out / "README.md").read_text()
    assert not list(out.glob(".hub-push-*"))  # no snapshot left behind
