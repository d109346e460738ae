"""The `hfmtl` command line: every argparse front end (the recipes' own parsers aside)."""

from .main import main

__all__ = ["main"]
