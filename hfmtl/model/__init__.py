"""The multi-task model: a pretrained encoder (backbone) shared by one head per task, its PEFT adapters,
freezing and layer-wise learning rates, and transfer from an earlier checkpoint.

Loaded lazily: transformers' Auto modules import `hfmtl.model.configuration` as they load (see
hfmtl/_auto.py), which must not pull in the modeling code, PEFT and the task types with it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MultiTaskConfig": "configuration",
    "MultiTaskModel": "modeling",
    "MultiTaskOutput": "modeling",
    "load_encoder": "modeling",
    "add_adapters": "adapters",
    "merged_encoder": "adapters",
    "initialize_from": "transfer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hfmtl.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
