"""Push a saved hfmtl model to the Hugging Face Hub, with a model card generated from its files.

    hfmtl push MODEL_DIR REPO_ID [--private] [--revision BRANCH] [--commit-message MSG] [--create-pr]
                                 [--license ID] [--language CODE ...] [--base-model HUB_ID] [--dry-run]

Everything that talks to the Hub is huggingface_hub's: `HfApi.create_repo` (``exist_ok``),
`HfApi.create_branch` for a new ``--revision``, and `HfApi.upload_folder`, which validates README.md's
metadata on the Hub, asks the Hub how to send each file and commits them (large folders in several
commits, resumable by running the same push again).

What is uploaded: the model directory minus `UPLOAD_IGNORE_PATTERNS` (see `files_to_upload`):

- ``checkpoints/`` (optimizer and RNG states for resuming: large, and of no use to a user of the model),
  ``best/`` (a copy of the best weights during training; the saved model already holds them),
  ``*.tmp`` (half-written files and directories of an interrupted save);
- ``train.log`` and the trackers' ``hfmtl/`` folder: local diagnostics with local paths and host names;
  what a reader needs from them is in ``metrics.json`` and the card;
- hidden files (``.env``, ``.git`` and the like) and PEFT's own template card ``adapters/**/README.md``,
  which names the base by its local path and carries no information.

A PEFT model's directory holds its adapters and heads only, so that is what is pushed; the card names
the base encoder. The token comes from where huggingface_hub looks for it (``token=``, then ``HF_TOKEN``,
then the login cache of ``hf auth login``); hfmtl passes it through and never writes it anywhere. A push
refuses a file that contains the token.

Example:
    >>> push_to_hub("outputs/glue", "me/minilm-glue", private=True)  # doctest: +SKIP
    'https://huggingface.co/me/minilm-glue/commit/3f2a...'
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, get_token, validate_repo_id

from ..errors import HfmtlError
from .model_card import write_model_card
from .saved_model import hub_model_id, read_model_dir

logger = logging.getLogger("hfmtl")

UPLOAD_IGNORE_PATTERNS: tuple[str, ...] = (
    "checkpoints/",
    "best/",
    "*.tmp",
    "*.tmp/*",
    "train.log",
    "hfmtl/",  # the trackers' logs (Accelerator project_dir = output_dir, project name "hfmtl")
    ".*",
    "*/.*",
    "adapters/*README.md",
)
# Files of this size or less are searched for the token before a push (configs, cards, tokenizer
# files, logs); weights are not: reading gigabytes to look for a string nobody writes there costs more
# than it protects.
_TOKEN_SCAN_MAX_BYTES = 50 * 2**20
# The HTTP client's own error class (httpx in huggingface_hub 1.x, httpx2 in 2.x): refused connections,
# DNS failures and timeouts derive from it, as HfHubHTTPError does.
_HTTP_CLIENT_ERROR: type[Exception] = HfHubHTTPError.__mro__[1]


def files_to_upload(model_dir: str | os.PathLike) -> list[str]:
    """The files `push_to_hub` sends, as paths relative to `model_dir`, sorted.

    The same listing and filter `HfApi.upload_folder` applies (`UPLOAD_IGNORE_PATTERNS` and
    huggingface_hub's own ``.git`` / ``.cache/huggingface`` patterns). README.md is listed once the card
    is written, which `push_to_hub` does first.

    Example:
        >>> files_to_upload("outputs/glue")  # doctest: +SKIP
        ['README.md', 'config.json', 'config.yaml', 'metrics.json', 'model.safetensors', 'tokenizer.json', ...]
    """
    folder = Path(model_dir).expanduser().resolve()
    relative = [p.relative_to(folder).as_posix() for p in sorted(folder.glob("**/*")) if p.is_file()]
    ignore = [*UPLOAD_IGNORE_PATTERNS, *DEFAULT_IGNORE_PATTERNS]
    return sorted(filter_repo_objects(relative, ignore_patterns=ignore))


def push_to_hub(
    source: str | os.PathLike | Any,
    repo_id: str,
    *,
    tokenizer: Any = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    create_pr: bool = False,
    card_data: dict[str, Any] | None = None,
) -> str:
    """Upload an hfmtl model to the Hub repo `repo_id`, with its model card: the one way hfmtl pushes
    (``hfmtl push``, ``train.push_to_hub`` and Python all come here).

    The card (README.md) is generated anew from the directory's files, unless README.md is one you
    wrote (no hfmtl marker in it): then it is uploaded as it is.

    Args:
        source: a saved model directory (a training's output_dir, or a stage directory of a staged run),
            or an in-memory `MultiTaskModel`: saved into a temporary directory first (a PEFT model as
            adapters + heads); without a run's config and metrics its card has the tasks, the encoder
            and the usage snippet.
        repo_id: ``namespace/name`` (or ``name``: your own namespace). Created if it does not exist.
        tokenizer: with an in-memory model, saved beside it (the card's snippet and ``hfmtl export``
            need it).
        private: create the repo private. False leaves a new repo's visibility to the Hub's default for
            the namespace (public, unless an organization defaults to private); an existing repo's
            visibility is never changed.
        revision: the branch to push to; created from the default branch if missing. ``refs/pr/N``
            pushes into an open pull request.
        commit_message: defaults to "Upload hfmtl model (tasks: ...)".
        token: a Hub token; None uses ``HF_TOKEN`` or the login cache (`hf auth login`).
        create_pr: open a pull request against the default branch instead of committing to it.
        card_data: options of `hfmtl.publish.model_card.build_model_card`: ``license``, ``language``,
            ``base_model`` (the Hub id of a base saved under a local path), ``tags``.

    Returns:
        The URL of the commit, or of the pull request with `create_pr`.

    Raises:
        HfmtlError: not an hfmtl model directory, a bad repo id or argument, a file that contains the
            token, or anything the Hub refused or could not be reached for, as one line saying what to do.

    Example:
        >>> push_to_hub("outputs/rte_transfer/target", "me/minilm-rte", card_data={"license": "apache-2.0"})  # doctest: +SKIP
        'https://huggingface.co/me/minilm-rte/commit/9c1e...'
        >>> push_to_hub(model, "me/my-mtl-model", tokenizer=tokenizer)  # doctest: +SKIP
    """
    options = {
        "private": private,
        "revision": revision,
        "commit_message": commit_message,
        "token": token,
        "create_pr": create_pr,
        "card_data": card_data,
    }
    if hasattr(source, "save_pretrained"):
        with tempfile.TemporaryDirectory(prefix="hfmtl-push-") as tmp:
            source.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            return _push_directory(tmp, repo_id, **options)
    return _push_directory(source, repo_id, **options)


def _push_directory(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool,
    revision: str | None,
    commit_message: str | None,
    token: str | None,
    create_pr: bool,
    card_data: dict[str, Any] | None,
) -> str:
    saved = read_model_dir(model_dir)  # one-line errors for a missing or foreign directory, first
    _check_weights(saved.path, peft=bool(saved.peft))
    repo_id = check_repo_id(repo_id)
    if create_pr and revision not in (None, constants.DEFAULT_REVISION):
        raise HfmtlError("a pull request is opened against the default branch: drop --revision or --create-pr")
    write_model_card(model_dir, repo_id=repo_id, **(card_data or {}))
    if saved.peft and hub_model_id(saved.peft.get("base_model")) is None:
        logger.warning(
            "%s is a PEFT model on the local base %r: loading it from %s needs that base there too "
            "(or set peft.base_model in config.json to the base's Hub id)",
            saved.path,
            saved.peft.get("base_model"),
            repo_id,
        )
    files = files_to_upload(model_dir)
    _refuse_token_in_files(saved.path, files, token)
    commit_message = commit_message or f"Upload hfmtl model (tasks: {', '.join(saved.config.get('tasks') or {})})"
    api = HfApi()  # reads the endpoint now (HF_ENDPOINT), not when huggingface_hub was imported
    with _hub_errors(repo_id, api.endpoint):
        repo_id = api.create_repo(repo_id, private=private or None, exist_ok=True, token=token).repo_id
        if revision and revision != constants.DEFAULT_REVISION and not revision.startswith("refs/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=saved.path,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
            token=token,
            ignore_patterns=list(UPLOAD_IGNORE_PATTERNS),  # upload_folder appends to the list it gets
        )
    logger.info("pushed %d files of %s to %s", len(files), saved.path, info.commit_url)
    return info.pr_url or info.commit_url


# --- checks --------------------------------------------------------------------------------------------


def check_repo_id(repo_id: str) -> str:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HfmtlError(f"repo id {repo_id!r} is not valid: use namespace/name, e.g. your-name/my-model") from err
    return repo_id


def _check_weights(path: Path, peft: bool) -> None:
    needed = ["heads.safetensors", "adapters"] if peft else ["model.safetensors", "model.safetensors.index.json"]
    present = [name for name in needed if (path / name).exists()]
    if (peft and len(present) < len(needed)) or not present:
        raise HfmtlError(f"{path} has config.json but no weights ({' / '.join(needed)}): the save did not finish")


def _refuse_token_in_files(folder: Path, files: list[str], token: str | None) -> None:
    """Refuse to upload a file that contains the Hub token (a config or notes someone pasted it into)."""
    secret = token or get_token()
    if not secret or len(secret) < 8:
        return
    needle = secret.encode()
    for name in files:
        path = folder / name
        if path.stat().st_size <= _TOKEN_SCAN_MAX_BYTES and needle in path.read_bytes():
            raise HfmtlError(f"{path} contains your Hub token: remove it from the file before pushing")


@contextlib.contextmanager
def _hub_errors(repo_id: str, endpoint: str) -> Iterator[None]:
    """huggingface_hub's exceptions (multi-line, with request ids) -> one HfmtlError line with the fix."""
    try:
        yield
    except OfflineModeIsEnabled as err:
        raise HfmtlError("HF_HUB_OFFLINE=1 is set: unset it (or set HF_HUB_OFFLINE=0) to push to the Hub") from err
    except RevisionNotFoundError as err:
        raise HfmtlError(f"{repo_id} has no such revision: {_first_line(err)}") from err
    except RepositoryNotFoundError as err:
        raise HfmtlError(
            f"repository {repo_id} not found or not accessible: check the id, and that your token "
            "(HF_TOKEN or `hf auth login`) may write to it"
        ) from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status == 401:
            raise HfmtlError("the Hub did not accept your credentials: set HF_TOKEN or run `hf auth login`") from err
        if status == 403:
            raise HfmtlError(f"your token may not write to {repo_id}: use a token with write access to it") from err
        raise HfmtlError(f"the Hub refused the push to {repo_id}: {_first_line(err)}") from err
    except _HTTP_CLIENT_ERROR as err:
        raise HfmtlError(
            f"cannot reach the Hub at {endpoint} ({type(err).__name__}: {_first_line(err)}): check the "
            "network connection, or HF_ENDPOINT"
        ) from err
    except ValueError as err:  # upload_folder: README.md's metadata rejected by the Hub, or a bad argument
        if "README.md" in str(err):
            raise HfmtlError(
                f"the Hub rejected the metadata of README.md ({_first_line(err)}): fix it, or delete README.md "
                "to have hfmtl write a new card"
            ) from err
        raise HfmtlError(f"the push to {repo_id} failed: {_first_line(err)}") from err


def _first_line(err: BaseException) -> str:
    """The message in one line: huggingface_hub's span several (status, url, request id, server text)."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return re.sub(r"\s*For more information check: \S+", "", text) or type(err).__name__
