"""Bad rows and bad paths: each is one line that names the task, the file, the line and the column (or
the path that does not exist), never a traceback and never a model trained on it; splits whose extra
columns differ still train."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import DATA, TASK_CONFIGS, make_config, write_config

from hfmtl import cli

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


class _CurrentStderr:
    """A stream that writes to whatever sys.stderr is at the time of the write."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(autouse=True, scope="module")
def _datasets_logs_to_the_current_stderr():
    """`datasets` logs a reader's failure through a handler bound to the sys.stderr of its first use,
    which pytest swaps for each test: here it follows the swaps, so the tests see its lines."""
    import datasets

    for handler in datasets.utils.logging._get_library_root_logger().handlers:
        handler.stream = _CurrentStderr()  # not setStream: it would flush a stream pytest closed


def _rows(dataset: str, split: str, n: int) -> list[dict]:
    lines = (DATA / dataset / f"{split}.jsonl").read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


def _write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _files(tmp_path: Path, dataset: str, train_lines: list[str] | None = None, n: int = 16) -> dict[str, str]:
    """A small copy of `dataset` (train: `train_lines` if given), as the task's data_files."""
    train = train_lines if train_lines is not None else [json.dumps(r) for r in _rows(dataset, "train", n)]
    validation = [json.dumps(r) for r in _rows(dataset, "validation", 8)]
    return {
        "train": _write_lines(tmp_path / "train.jsonl", train),
        "validation": _write_lines(tmp_path / "validation.jsonl", validation),
    }


def _with_bad_line(dataset: str, line_number: int, bad: str, n: int = 16) -> list[str]:
    """The first `n` train rows of `dataset`, with line `line_number` (from 1) replaced by `bad`."""
    lines = [json.dumps(r) for r in _rows(dataset, "train", n)]
    lines[line_number - 1] = bad
    return lines


def _train_error(tmp_path: Path, encoder: str, tasks: dict, capsys) -> str:
    """`hfmtl train` on `tasks`: it must fail with exit 2, one error line and no output directory."""
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", make_config(encoder, out, tasks, max_steps=2))
    assert cli.main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 1, err
    assert not (out / "model.safetensors").exists()
    return err.strip().splitlines()[-1]


def _stsb_row(label) -> str:
    return '{"sentence1": "A man plays.", "sentence2": "A man is playing.", "label": ' + label + "}"


@pytest.mark.parametrize(
    ("label", "problem"),
    [
        ("NaN", "is NaN"),
        ("Infinity", "is inf"),
        ("-Infinity", "is -inf"),
        ("1e39", "beyond float32"),  # a float64, but inf as the float32 the model trains on
        ("null", "is null"),
        ('"high"', "'high' is not a number"),
    ],
)
def test_a_bad_regression_target_names_the_file_line_and_column(tiny_encoder_dir, tmp_path, capsys, label, problem):
    files = _files(tmp_path, "stsb", _with_bad_line("stsb", 5, _stsb_row(label)))
    last = _train_error(tmp_path, tiny_encoder_dir, {"stsb": {**TASK_CONFIGS["stsb"], "data_files": files}}, capsys)
    assert last.startswith("error: task 'stsb': ")
    assert f"{files['train']!r} line 5 (split 'train', row 4)" in last and "column 'label'" in last
    assert problem in last


def test_a_number_too_large_for_json_names_its_line(tiny_encoder_dir, tmp_path, capsys):
    files = _files(tmp_path, "stsb", _with_bad_line("stsb", 3, _stsb_row("1e400")))
    last = _train_error(tmp_path, tiny_encoder_dir, {"stsb": {**TASK_CONFIGS["stsb"], "data_files": files}}, capsys)
    assert f"task 'stsb': {files['train']!r} line 3: " in last and "1e400" in last


def test_a_bad_target_in_a_csv_file_names_its_line(tiny_encoder_dir, tmp_path, capsys):
    rows = _rows("stsb", "train", 12)
    csv_lines = ["sentence1,sentence2,label"] + [f'"{r["sentence1"]}","{r["sentence2"]}",{r["label"]}' for r in rows]
    csv_lines[7] = '"A man plays.","A man is playing.",'  # line 8: an empty cell, read as a missing value
    train = _write_lines(tmp_path / "train.csv", csv_lines)
    validation = _write_lines(tmp_path / "validation.csv", csv_lines[:1] + csv_lines[1:5])
    task = {**TASK_CONFIGS["stsb"], "data_files": {"train": train, "validation": validation}}
    last = _train_error(tmp_path, tiny_encoder_dir, {"stsb": task}, capsys)
    assert f"{train!r} line 8 (split 'train', row 6): column 'label' is null" in last


def test_a_missing_classification_label_names_its_line(tiny_encoder_dir, tmp_path, capsys):
    bad = '{"sentence1": "It rains.", "sentence2": "It is wet.", "label": null}'
    files = _files(tmp_path, "rte", _with_bad_line("rte", 7, bad))
    last = _train_error(tmp_path, tiny_encoder_dir, {"rte": {**TASK_CONFIGS["rte"], "data_files": files}}, capsys)
    assert f"task 'rte': {files['train']!r} line 7 (split 'train', row 6): column 'label' is null" in last


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ('{"sentence1": null, "sentence2": "It is wet.", "label": 0}', "column 'sentence1' is null"),
        ('{"sentence1": "It rains.", "sentence2": 42, "label": 0}', "column 'sentence2' holds 42, not a string"),
    ],
)
def test_a_text_that_is_not_a_string_names_its_line(tiny_encoder_dir, tmp_path, capsys, bad, problem):
    files = _files(tmp_path, "rte", _with_bad_line("rte", 2, bad))
    last = _train_error(tmp_path, tiny_encoder_dir, {"rte": {**TASK_CONFIGS["rte"], "data_files": files}}, capsys)
    assert f"task 'rte': {files['train']!r} line 2 (split 'train', row 1): {problem}" in last


def test_a_null_word_list_names_its_line(tiny_encoder_dir, tmp_path, capsys):
    bad = '{"tokens": null, "ner_tags": ["O"]}'
    files = _files(tmp_path, "conll2003", _with_bad_line("conll2003", 4, bad))
    last = _train_error(tmp_path, tiny_encoder_dir, {"ner": {**TASK_CONFIGS["ner"], "data_files": files}}, capsys)
    assert f"task 'ner': {files['train']!r} line 4 (split 'train', row 3): column 'tokens' is null" in last


def test_a_row_its_task_cannot_preprocess_is_named(tiny_encoder_dir, tmp_path, capsys):
    """Found by preprocessing the rows again, once the tokenization failed: the task's own message."""
    bad = '{"tokens": ["Peter", "Blackburn"], "ner_tags": ["B-PER"]}'
    files = _files(tmp_path, "conll2003", _with_bad_line("conll2003", 4, bad))
    last = _train_error(tmp_path, tiny_encoder_dir, {"ner": {**TASK_CONFIGS["ner"], "data_files": files}}, capsys)
    assert (
        last
        == f"error: task 'ner': {files['train']!r} line 4 (split 'train', row 3): an example has 2 words but 1 tags"
    )


def test_a_row_that_breaks_preprocessing_is_named_with_the_error(tiny_encoder_dir, tmp_path, capsys):
    rows = _rows("squad", "train", 12)
    rows[6]["answers"] = {"text": rows[6]["answers"]["text"]}  # no answer_start: read as null
    files = _files(tmp_path, "squad", [json.dumps(r) for r in rows], n=12)
    last = _train_error(tmp_path, tiny_encoder_dir, {"squad": {**TASK_CONFIGS["squad"], "data_files": files}}, capsys)
    assert last.startswith(
        f"error: task 'squad': {files['train']!r} line 7 (split 'train', row 6): cannot be preprocessed ("
    )


def test_a_failure_of_every_row_is_no_rows_fault(tiny_encoder_dir, tmp_path, capsys):
    """Every row with a tag outside the label set: the task's message as it is, with no line to blame."""
    ner = {**TASK_CONFIGS["ner"], "label_names": ["X"]}
    last = _train_error(tmp_path, tiny_encoder_dir, {"ner": ner}, capsys)
    assert last.startswith("error: task 'ner': label 'B-ORG' is not in the label set ['X']")


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ('{"sentence1": "It rains.", "sentence2": "It is wet.", "label": 0', "not valid JSON"),
        ("[1, 2]", "a JSON array, not an object"),
    ],
)
def test_a_corrupt_jsonl_line_is_named(tiny_encoder_dir, tmp_path, capsys, bad, problem):
    lines = _with_bad_line("rte", 9, bad)
    lines.insert(3, "")  # a blank line: skipped by the reader, counted by the line numbers
    files = _files(tmp_path, "rte", lines)
    last = _train_error(tmp_path, tiny_encoder_dir, {"rte": {**TASK_CONFIGS["rte"], "data_files": files}}, capsys)
    assert f"task 'rte': {files['train']!r} line 10: {problem}" in last


def test_a_blank_line_does_not_shift_the_line_of_a_bad_row(tiny_encoder_dir, tmp_path, capsys):
    lines = _with_bad_line("stsb", 6, _stsb_row("NaN"))
    lines.insert(1, "")
    files = _files(tmp_path, "stsb", lines)
    last = _train_error(tmp_path, tiny_encoder_dir, {"stsb": {**TASK_CONFIGS["stsb"], "data_files": files}}, capsys)
    assert f"{files['train']!r} line 7 (split 'train', row 5): column 'label' is NaN" in last


def test_integer_tags_in_one_split_and_string_tags_in_another_are_named(tiny_encoder_dir, tmp_path, capsys):
    names = TASK_CONFIGS["ner"]["label_names"]
    train = [
        json.dumps({**r, "ner_tags": [names.index(t) for t in r["ner_tags"]]}) for r in _rows("conll2003", "train", 16)
    ]
    files = _files(tmp_path, "conll2003", train)
    last = _train_error(tmp_path, tiny_encoder_dir, {"ner": {**TASK_CONFIGS["ner"], "data_files": files}}, capsys)
    assert f"task 'ner': {files['validation']!r} line 1 (split 'validation', row 0): column 'ner_tags' holds" in last
    assert "holds strings, but integers in split 'train'" in last


def test_splits_whose_extra_columns_differ_train(tiny_encoder_dir, tmp_path):
    """AG News's test file has a `title` column its train file lacks: only the task's columns must agree."""
    train = [json.dumps({k: v for k, v in r.items() if k != "idx"}) for r in _rows("rte", "train", 16)]
    validation = [json.dumps({**r, "title": "extra"}) for r in _rows("rte", "validation", 8)]
    files = {
        "train": _write_lines(tmp_path / "train.jsonl", train),
        "validation": _write_lines(tmp_path / "validation.jsonl", validation),
    }
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path / "run.yaml",
        make_config(tiny_encoder_dir, out, {"rte": {**TASK_CONFIGS["rte"], "data_files": files}}, max_steps=2),
    )
    assert cli.main(["train", str(cfg)]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert history[-1]["step"] == 2 and 0 <= history[-1]["eval/rte/accuracy"] <= 1


# --- paths that do not exist -------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["model.name_or_path", "model.init_from"])
@pytest.mark.parametrize("name", ["./no-such-model", "models/bert/no-such-model", "~/no-such-model-dir"])
def test_a_missing_local_model_path_says_it_does_not_exist(tiny_encoder_dir, tmp_path, capsys, monkeypatch, key, name):
    monkeypatch.chdir(tmp_path)
    cfg_dict = make_config(tiny_encoder_dir, tmp_path / "out", {"rte": TASK_CONFIGS["rte"]})
    cfg_dict["model"][key.split(".")[1]] = name
    assert cli.main(["train", str(write_config(tmp_path / "run.yaml", cfg_dict))]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Repo id" not in err and err.count("error: ") == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {key}={name!r}: the directory ") and "does not exist" in last
    assert f"{str(Path(name).expanduser().absolute())!r}" in last  # where it was looked for
    assert not (tmp_path / "out").exists()


def test_predict_and_info_on_a_missing_local_model_say_it_does_not_exist(tmp_path, capsys, monkeypatch):
    from hfmtl import Predictor
    from hfmtl.errors import HfmtlError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(HfmtlError, match=r"'\./outputs/none'.* does not exist"):
        Predictor.from_pretrained("./outputs/none")
    (tmp_path / "in.jsonl").write_text('{"task": "rte", "sentence1": "a", "sentence2": "b"}\n')
    for argv in (["predict", "outputs/run/none", "--input", "in.jsonl"], ["info", "outputs/run/none"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "does not exist" in err and "Repo id" not in err, err


def test_a_missing_peft_base_model_says_it_does_not_exist(tiny_encoder_dir, tmp_path):
    from hfmtl import MultiTaskModel
    from hfmtl.errors import ConfigError
    from hfmtl.model.adapters import add_adapters

    spec = {"type": "classification", "num_labels": 2, "id2label": {0: "a", 1: "b"}}
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, {"rte": spec})
    lora = {"peft_type": "LORA", "r": 2, "target_modules": ["query", "value"]}
    add_adapters(model, lora, "shared", base_model=str(tmp_path / "base"))
    model.save_pretrained(tmp_path / "saved")
    with pytest.raises(ConfigError, match=r"peft.base_model='.*/base': .* does not exist"):
        MultiTaskModel.from_pretrained(tmp_path / "saved")


def test_a_hub_id_still_goes_to_the_hub():
    from hfmtl.errors import ConfigError
    from hfmtl.model.backbone import check_model_path

    assert check_model_path("no-such-org/no-such-model", "model.name_or_path") == "no-such-org/no-such-model"
    assert check_model_path("bert-base-uncased", "model.name_or_path") == "bert-base-uncased"
    with pytest.raises(ConfigError, match="does not exist"):
        check_model_path("a/b/c", "model.name_or_path")  # not a Hub id: a path
