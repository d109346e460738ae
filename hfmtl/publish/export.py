"""Export one task of a multi-task model to a standard transformers model.

The export is a plain ``...ForSequenceClassification`` / ``...ForTokenClassification`` /
``...ForMultipleChoice`` / ``...ForQuestionAnswering`` of the encoder's own family (the task type says
which: `Task.standard_head`), with the task's head mapped onto the family's standard head, its labels,
its ``problem_type`` and the tokenizer beside it.
It loads with `transformers.pipeline` where hfmtl is not installed, and it is written only after the
reloaded export gave the same logits as hfmtl on test inputs: an export that would silently
compute something else is refused, and nothing half-written is ever left at the target.

Example:
    >>> from hfmtl.publish.export import export_model_dir
    >>> export_model_dir("outputs/glue", "rte", "exported/rte")  # doctest: +SKIP
    >>> from transformers import pipeline
    >>> pipeline("text-classification", model="exported/rte")({"text": premise, "text_pair": hypothesis})  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PreTrainedConfig, PreTrainedModel

from ..errors import HfmtlError
from ..files import replace_directory
from ..model import MultiTaskConfig, MultiTaskModel
from ..model.adapters import is_peft_model, merged_encoder
from ..tasks import StandardHead, Unsupported, get_task_class
from ..tasks.heads import PooledHead, TokenHead
from .head_layouts import FAMILIES, Family, classifier_dropout


def export_model_dir(
    model_dir: str | os.PathLike, task_name: str, out_dir: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Export `task_name` of the hfmtl model saved in `model_dir`, with its tokenizer, to `out_dir`.

    Args:
        model_dir: a directory written by `MultiTaskModel.save_pretrained` (and the tokenizer).
        task_name: the task to export.
        out_dir: where to write the standard model; created if missing.
        overwrite: replace `out_dir` if it exists and is not empty.

    Returns:
        The path of the exported model.

    Raises:
        HfmtlError: `model_dir` is not an hfmtl model, the task is unknown, or cannot be mapped exactly.

    Example:
        >>> export_model_dir("outputs/glue", "rte", "exported/rte")  # doctest: +SKIP
        PosixPath('exported/rte')
    """
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as err:  # no such directory, no config.json, an unknown model_type
        raise _load_error(model_dir, err) from err
    if not isinstance(config, MultiTaskConfig):
        raise HfmtlError(f"{model_dir} holds a {config.model_type!r} model, not an hfmtl multi-task model")
    _standard_head(config, task_name)  # the task is known and its type exportable, before loading weights
    try:
        model = MultiTaskModel.from_pretrained(model_dir, config=config)
    except (OSError, ValueError) as err:  # missing or unreadable weights
        raise _load_error(model_dir, err) from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as err:  # transformers' messages here are long and multi-line
        raise HfmtlError(
            f"no usable tokenizer in {model_dir}, which pipeline() needs beside the export: save it there with "
            "tokenizer.save_pretrained, or call export_task(model, task_name, out_dir, tokenizer)"
        ) from err
    return export_task(model, task_name, out_dir, tokenizer, overwrite=overwrite)


def export_task(
    model: MultiTaskModel,
    task_name: str,
    out_dir: str | os.PathLike,
    tokenizer: Any = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write task `task_name` of `model` as a standard transformers model in `out_dir`.

    The export is reloaded from disk and compared with `model` on test inputs before it is moved into
    place, so a mapping that would change the logits raises instead of writing a wrong model.

    Args:
        model: the multi-task model (left in the training mode it was in).
        task_name: the task to export.
        out_dir: where to write; created if missing.
        tokenizer: saved beside the model, which `transformers.pipeline` needs; None writes the model only.
        overwrite: replace `out_dir` if it exists and is not empty.

    Returns:
        The path of the exported model.

    Raises:
        HfmtlError: unknown task, an encoder or head with no exact standard equivalent, a non-empty
            `out_dir` without `overwrite`, or an export whose logits differ from `model`'s.

    Example:
        >>> export_task(model, "ner", "exported/ner", tokenizer)  # doctest: +SKIP
        >>> AutoModelForTokenClassification.from_pretrained("exported/ner")  # doctest: +SKIP
    """
    plain = _plain_model(model, task_name)
    target = _standard_head(model.config, task_name)
    out = _check_target(Path(out_dir), overwrite)
    standard = _build_standard(plain, task_name, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        standard.save_pretrained(tmp)
        del standard  # the check below reloads from disk, as a user of the export will
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _verify(model, task_name, tmp, target)  # against the model as given, adapters and all
        replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _load_error(model_dir: str | os.PathLike, err: Exception) -> HfmtlError:
    where = "" if Path(model_dir).is_dir() else " (no such directory, and not a loadable Hub id)"
    return HfmtlError(f"cannot load an hfmtl model from {model_dir}{where}: {str(err).strip().splitlines()[0]}")


def _check_task(config: MultiTaskConfig, task_name: str) -> dict[str, Any]:
    if task_name not in config.tasks:
        raise HfmtlError(f"unknown task {task_name!r}; this model has tasks {sorted(config.tasks)}")
    return config.tasks[task_name]


def _standard_head(config: MultiTaskConfig, task_name: str) -> StandardHead:
    """Where the task's type puts its head in a standard model; a type with none is refused."""
    spec = _check_task(config, task_name)
    try:
        return get_task_class(spec["type"], f"tasks.{task_name}.type").standard_head(spec)
    except Unsupported as err:
        raise HfmtlError(f"cannot export task {task_name!r} of type {spec['type']!r}: {err}") from None


def _plain_model(model: MultiTaskModel, task_name: str) -> MultiTaskModel:
    """The model whose encoder is a plain `PreTrainedModel`, ready to export `task_name`.

    PEFT adapters (the shared one, or `task_name`'s in per-task mode) are merged into a copy of the
    weights, so the caller's model keeps its adapters; prompt methods cannot be merged and are refused.
    """
    _check_task(model.config, task_name)
    if is_peft_model(model):
        model = copy.deepcopy(model)
        model.encoder = merged_encoder(model, task_name)
        model.config.peft = None
    if not isinstance(model.encoder, PreTrainedModel):
        raise HfmtlError(
            f"the encoder is a {type(model.encoder).__name__}, not a plain transformers model: "
            "merge its adapters before exporting"
        )
    return model


def _build_standard(model: MultiTaskModel, task_name: str, target: StandardHead) -> PreTrainedModel:
    """The standard model of the task, holding the encoder's and the head's weights."""
    spec = model.config.tasks[task_name]
    model_type = model.config.encoder.model_type
    family = FAMILIES.get(model_type)
    if family is None and target.layout != "token":
        raise _pooled_head_refusal(model, task_name, target)
    head = model.heads[task_name]
    targets = _head_targets(task_name, target, family, head)

    config = copy.deepcopy(model.config.encoder)  # from_config writes into it: keep the model's own intact
    for key, value in (family.config if family else classifier_dropout)(config, head.dropout.p).items():
        setattr(config, key, value)
    # set even where it is None: a value left from the encoder's checkpoint would pick the wrong loss
    config.problem_type = spec.get("problem_type") or target.problem_type
    id2label = spec.get("id2label") or {i: f"LABEL_{i}" for i in range(spec["num_labels"])}
    config.id2label = {int(i): str(name) for i, name in id2label.items()}
    config.label2id = {name: i for i, name in config.id2label.items()}

    dtype = next(model.encoder.parameters()).dtype
    try:
        standard = target.auto_class.from_config(config, dtype=dtype)
    except ValueError as err:  # the Auto class has no model for this encoder type
        raise HfmtlError(f"cannot export task {task_name!r}: {' '.join(str(err).split())[:300]}") from err
    base = standard.base_model_prefix
    state = {f"{base}.{key}": value for key, value in model.encoder.state_dict().items()}
    if family is None:  # a token head of a family without an entry: find its layer in the class itself
        targets = {"out_proj": _token_layer(task_name, standard, state)}
    for source, destination in targets.items():
        for name, tensor in getattr(head, source).state_dict().items():
            state[f"{destination.format(base=base)}.{name}"] = tensor
    try:
        missing, unexpected = standard.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch
        raise HfmtlError(f"cannot export task {task_name!r}: {str(err).splitlines()[-1].strip()}") from err
    if missing or unexpected:
        raise HfmtlError(
            f"cannot export task {task_name!r}: {type(standard).__name__} does not fit the hfmtl weights "
            f"(missing: {sorted(missing)}, unexpected: {sorted(unexpected)})"
        )
    return standard


def _pooled_head_refusal(model: MultiTaskModel, task_name: str, target: StandardHead) -> HfmtlError:
    """Why a pooled head of an encoder type without a `FAMILIES` entry cannot export: what the standard
    class has in its place, read from the class itself (built on the meta device: no memory)."""
    model_type = model.config.encoder.model_type
    try:
        with torch.device("meta"):
            standard = target.auto_class.from_config(copy.deepcopy(model.config.encoder))
    except ValueError:
        return HfmtlError(
            f"cannot export task {task_name!r}: transformers has no {target.auto_class.__name__} for {model_type!r}"
        )
    ours = {f"{standard.base_model_prefix}.{key}" for key in model.encoder.state_dict()}
    unmatched = [key for key in standard.state_dict() if key not in ours]
    name = type(standard).__name__
    if any(key.startswith(f"{standard.base_model_prefix}.") for key in unmatched):
        return HfmtlError(
            f"cannot export task {task_name!r}: {name}'s base model is laid out differently from hfmtl's encoder"
        )
    layers = sorted({key.rsplit(".", 1)[0] for key in unmatched})
    return HfmtlError(
        f"cannot export task {task_name!r} exactly: {name}'s head is {layers}, where hfmtl's is dense -> tanh -> "
        f"linear on the {model.heads[task_name].pooling!r} token (pooled heads export for: "
        f"{', '.join(sorted(FAMILIES))})"
    )


def _token_layer(task_name: str, standard: PreTrainedModel, base_state: dict[str, Any]) -> str:
    """The name of the one linear layer the standard per-token model has beyond its base model (e.g.
    ``classifier``, ``score``, ``qa_outputs``); raises where its head has more (a dense layer, a norm)."""
    unmatched = [key for key in standard.state_dict() if key not in base_state]
    base = standard.base_model_prefix
    if any(key.startswith(f"{base}.") for key in unmatched):  # e.g. T5's encoder stack vs T5EncoderModel
        raise HfmtlError(
            f"cannot export task {task_name!r}: {type(standard).__name__}'s base model is laid out differently "
            f"from hfmtl's encoder ({type(standard.base_model).__name__} vs the encoder stack it uses)"
        )
    extra = sorted({key.rsplit(".", 1)[0] for key in unmatched})
    layer = standard.get_submodule(extra[0]) if len(extra) == 1 else None
    if not isinstance(layer, nn.Linear):
        raise HfmtlError(
            f"cannot export task {task_name!r} exactly: {type(standard).__name__}'s head has the layers "
            f"{extra}, where hfmtl's token head is one linear layer"
        )
    return extra[0]


def _head_targets(task_name: str, target: StandardHead, family: Family | None, head: nn.Module) -> dict[str, str]:
    """Head submodule name -> the standard module it is copied into; raises where there is none."""
    if target.layout == "token":
        # a TokenHead (dropout -> linear) is the standard per-token head of every family in FAMILIES; for
        # another family `_token_layer` finds (and checks) its layer
        if not isinstance(head, TokenHead):
            raise HfmtlError(f"cannot export task {task_name!r}: its head is a {type(head).__name__}, not a TokenHead")
        return {"out_proj": target.token_module}
    if not isinstance(head, PooledHead):
        raise HfmtlError(f"cannot export task {task_name!r}: its head is a {type(head).__name__}, not a PooledHead")
    if head.pooling != "cls":
        raise HfmtlError(
            f"cannot export task {task_name!r}: it pools with {head.pooling!r} but transformers' heads read the "
            "first token only (train with pooling: cls to export)"
        )
    layout = getattr(family, target.layout)
    if isinstance(layout, str):
        raise HfmtlError(f"cannot export task {task_name!r} exactly: {layout}")
    return {"dense": layout[0], "out_proj": layout[1]}


def _verify(model: MultiTaskModel, task_name: str, directory: Path, target: StandardHead) -> None:
    """Reload the export from `directory` and compare its logits with `model`'s on test inputs."""
    exported, info = target.auto_class.from_pretrained(directory, output_loading_info=True)
    problems = {
        key: sorted(map(str, info.get(key) or ())) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    if any(problems.values()):
        raise HfmtlError(f"cannot export task {task_name!r}: the saved export reloads with {problems}")
    device = next(model.parameters()).device
    exported.to(device)
    accepted = model.encoder_input_names  # the base encoder's inputs, also under a PEFT wrapper
    choices = 3 if target.layout == "choice" else None
    inputs = {k: v.to(device) for k, v in _probe_inputs(model.config.encoder, accepted, choices).items()}
    with _eval_mode(model), _eval_mode(exported), torch.inference_mode():
        expected = model(task=task_name, **inputs).logits
        out = exported(**inputs)
    got = torch.stack([out.start_logits, out.end_logits], dim=-1) if hasattr(out, "start_logits") else out.logits
    if target.layout == "token" and "attention_mask" in inputs and got.shape == expected.shape:
        # per-token logits at padding positions are read by nothing (loss, pipeline, hfmtl's predictor), and
        # a decoder gives them other positions than hfmtl does (hfmtl/model/pooling.py): compare real tokens
        real = inputs["attention_mask"].bool()
        got, expected = got[real], expected[real]
    # identical weights and ops: anything beyond float noise is a mapping error
    atol, rtol = (1e-5, 1e-4) if expected.dtype == torch.float32 else (1e-2, 1e-2)
    if got.shape != expected.shape:
        problem = f"logits of shape {tuple(got.shape)} where hfmtl's are {tuple(expected.shape)}"
    elif not torch.allclose(got, expected, atol=atol, rtol=rtol):
        problem = f"logits up to {(got - expected).abs().max().item():.2g} away from hfmtl's"
    else:
        return
    raise HfmtlError(
        f"cannot export task {task_name!r}: {type(exported).__name__} gives {problem}; nothing was written"
    )


def _probe_inputs(config: PreTrainedConfig, accepted: set[str], choices: int | None) -> dict[str, torch.Tensor]:
    """Deterministic test inputs: random ids, sentence-pair segments, rows padded to different lengths."""
    generator = torch.Generator().manual_seed(0)
    batch, length = 3, 12
    shape = (batch, choices, length) if choices else (batch, length)
    input_ids = torch.randint(min(5, config.vocab_size - 1), config.vocab_size, shape, generator=generator)
    lengths = torch.tensor([length, length - 4, length - 7]).view(batch, *([1] * (len(shape) - 1)))
    positions = torch.arange(length)
    attention_mask = (positions < lengths).long().expand(shape).contiguous()
    input_ids = input_ids.masked_fill(attention_mask == 0, config.pad_token_id or 0)
    # a second segment only where the encoder has segment embeddings for it (RoBERTa has one type)
    second = positions >= length // 2 if getattr(config, "type_vocab_size", 0) >= 2 else positions < 0
    token_type_ids = (second & (attention_mask == 1)).long()
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    return {key: value for key, value in inputs.items() if key in accepted}


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def _check_target(out: Path, overwrite: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise HfmtlError(f"cannot export to {out}: it is a file")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise HfmtlError(f"cannot export to {out}: it exists and is not empty (pass overwrite=True / --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out
