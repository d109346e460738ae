"""Shared fixtures: offline settings, paths to ../shared, a tiny random BERT encoder, task configs."""

from __future__ import annotations

import os

# Set before transformers / datasets are imported anywhere: a Hub name must fail at once, not after
# ~45 s of retries, and nothing here may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

from hfmtl.training.callbacks import TrainerCallback  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
DATA = SHARED / "data"
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"


def data_files(name: str) -> dict[str, str]:
    """train/validation files of a dataset folder in ../shared/data."""
    return {split: str(DATA / name / f"{split}.jsonl") for split in ("train", "validation")}


# One config per task type, each on a real slice of ../shared/data.
TASK_CONFIGS: dict[str, dict] = {
    "rte": {
        "type": "classification",
        "data_files": data_files("rte"),
        "text_column": "sentence1",
        "text_pair_column": "sentence2",
        "label_names": ["entailment", "not_entailment"],
    },
    "stsb": {
        "type": "regression",
        "data_files": data_files("stsb"),
        "text_column": "sentence1",
        "text_pair_column": "sentence2",
    },
    "ner": {
        "type": "token_classification",
        "data_files": data_files("conll2003"),
        "tokens_column": "tokens",
        "tags_column": "ner_tags",
        "label_names": ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"],
    },
    "copa": {
        "type": "multiple_choice",
        "data_files": data_files("copa"),
        "context_column": "premise",
        "question_column": "question",
        "choices_column": "choices",
    },
    "squad": {
        "type": "question_answering",
        "data_files": data_files("squad"),
        "max_length": 128,
        "doc_stride": 48,
    },
}


def _data_texts(rows_per_file: int = 400) -> list[str]:
    """Every string (and list of strings) of the first rows of each dataset in ../shared/data."""
    import json

    texts = []
    for path in sorted(DATA.glob("*/*.jsonl")):
        with path.open() as f:
            for _, line in zip(range(rows_per_file), f):
                for value in json.loads(line).values():
                    if isinstance(value, str):
                        texts.append(value)
                    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                        texts.append(" ".join(value))
                    elif isinstance(value, dict):  # SQuAD's answers
                        texts.extend(v for v in value.get("text", []) if isinstance(v, str))
    # whole numbers up to 99 as single pieces, as a real vocabulary has them
    return texts + [" ".join(map(str, range(100)))] * 50


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> str:
    """A lower-cased WordPiece tokenizer with BERT's special tokens, trained here on the test slices of
    ../shared/data (4,000 pieces): unit tests tokenize real text without borrowing a model's tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.train_from_iterator(_data_texts(), trainers.WordPieceTrainer(vocab_size=4000, special_tokens=specials))
    cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    wordpiece.decoder = decoders.WordPiece()
    tokenizer = BertTokenizerFast(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    path = tmp_path_factory.mktemp("tiny-tokenizer")
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_decoder_tokenizer_dir(tmp_path_factory, tiny_tokenizer_dir) -> str:
    """The tiny WordPiece vocabulary as a decoder model's tokenizer: no [CLS] in front (the first token is
    the text's own), [SEP] appended as the end-of-sequence token, and NO pad token, as many decoder
    tokenizers ship."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    wordpiece = Tokenizer.from_file(str(Path(tiny_tokenizer_dir) / "tokenizer.json"))
    eos = wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="$A [SEP]", pair="$A [SEP] $B:1 [SEP]:1", special_tokens=[("[SEP]", eos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece, unk_token="[UNK]", eos_token="[SEP]", model_max_length=512
    )
    path = tmp_path_factory.mktemp("tiny-decoder-tokenizer")
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, tiny_tokenizer_dir) -> str:
    """A 2-layer, hidden-64 random BERT saved with the tiny tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    path = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def encode(encoder_dir: str, *texts: str):
    """`texts` through the tokenizer saved with `encoder_dir`, as a padded batch of tensors."""
    from transformers import AutoTokenizer

    return dict(AutoTokenizer.from_pretrained(encoder_dir)(list(texts), padding=True, return_tensors="pt"))


def make_config(
    encoder: str, output_dir: str | Path, tasks: dict[str, dict], samples: int = 64, eval_samples: int = 32, **train
) -> dict:
    """A run config dict on `encoder` for `tasks`, each cut to `samples` train / `eval_samples` eval."""
    task_cfgs = {}
    for name, cfg in tasks.items():
        cfg = dict(cfg)
        cfg.setdefault("max_train_samples", samples)
        cfg.setdefault("max_eval_samples", eval_samples)
        task_cfgs[name] = cfg
    train_cfg = {
        "output_dir": str(output_dir),
        "max_steps": 10,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "learning_rate": 1e-3,
        "logging_steps": 5,
        "seed": 0,
    }
    train_cfg.update(train)
    return {"model": {"name_or_path": encoder, "max_length": 64}, "tasks": task_cfgs, "train": train_cfg}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def reset_accelerate_state() -> None:
    """Accelerate keeps process-wide singletons; each in-process run starts from a clean state."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def fresh_accelerate_state():
    reset_accelerate_state()
    yield


def assert_reloaded_logits_equal(actual, expected) -> None:
    """Logits of a reloaded model against the model that was saved.

    The weights round-trip bit for bit, but a reload may place them at other memory alignments
    (transformers 5.24 does), so CPU kernels take other SIMD paths and logits differ in the last bits:
    bit-equality is a resume guarantee (one process layout), not a reload one.
    """
    import torch

    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


class CrashAt(TrainerCallback):
    """Dies as optimizer step `step` (counted from 1) begins, as a run killed mid-training would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, trainer, step, task_names):
        if step == self.step:
            raise KeyboardInterrupt("simulated crash")


def run_recipe(config_path: Path, *overrides: str, callbacks=()):
    """recipes/train.py's `run` in this process, on the CPU, with extra trainer `callbacks`; returns the
    (last stage's) trainer."""
    import argparse
    import runpy

    recipe = runpy.run_path(str(REPO_ROOT / "recipes" / "train.py"), run_name="recipe_train")
    return recipe["run"](argparse.Namespace(config=str(config_path), overrides=list(overrides), cpu=True), callbacks)
