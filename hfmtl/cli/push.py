"""``hfmtl push``: upload a saved model to the Hub with its generated model card (see hfmtl/publish/hub.py)."""

from __future__ import annotations

import argparse


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hfmtl push`` on the `hfmtl` console script's subparsers.

    Example:
        >>> parser = argparse.ArgumentParser(prog="hfmtl")
        >>> push = add_cli(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["push", "outputs/glue", "me/glue", "--private"]).private
        True
    """
    push = subparsers.add_parser(
        "push",
        help="Upload a saved model to the Hugging Face Hub, with a generated model card.",
        description="Upload a saved hfmtl model to the Hugging Face Hub, with a model card generated from its "
        "config.json, config.yaml and metrics.json. The token comes from HF_TOKEN or `hf auth login`.",
    )
    push.add_argument("model", metavar="MODEL_DIR", help="Saved hfmtl model directory.")
    push.add_argument("repo_id", metavar="REPO_ID", help="Hub repo, namespace/name; created if missing.")
    push.add_argument("--private", action="store_true", help="Create the repo private.")
    push.add_argument("--revision", metavar="BRANCH", help="Branch to push to (created if missing).")
    push.add_argument("--commit-message", metavar="MSG", help="Commit message.")
    push.add_argument("--create-pr", action="store_true", help="Open a pull request instead of committing.")
    push.add_argument("--license", help="License id for the card (e.g. apache-2.0); left out if not given.")
    push.add_argument("--language", nargs="+", metavar="CODE", help="Language code(s) of the data, e.g. en.")
    push.add_argument("--base-model", metavar="HUB_ID", help="Hub id of the base encoder saved as a local path.")
    push.add_argument(
        "--dry-run", action="store_true", help="Write README.md and list the files to upload; contact no server."
    )
    push.set_defaults(handler=_push_command)
    return push


def _push_command(args: argparse.Namespace) -> int:
    # imported here: every `hfmtl` command line builds this parser (hfmtl/cli/predict.py says why)
    from ..publish.hub import check_repo_id, files_to_upload, push_to_hub
    from ..publish.model_card import write_model_card
    from ..publish.saved_model import read_model_dir

    card_data = {"license": args.license, "language": args.language, "base_model": args.base_model}
    card_data = {k: v for k, v in card_data.items() if v is not None}
    if args.dry_run:
        read_model_dir(args.model)
        write_model_card(args.model, repo_id=check_repo_id(args.repo_id), **card_data)
        print("\n".join(files_to_upload(args.model)))
        return 0
    url = push_to_hub(
        args.model,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
        card_data=card_data,
    )
    print(f"pushed {args.model} to {url}")
    return 0
