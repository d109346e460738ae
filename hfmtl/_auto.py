"""Teach transformers' Auto classes the ``hfmtl`` model type, without importing transformers here.

``import hfmtl`` stays light (``import hfmtl.config`` loads no torch), yet ``import hfmtl;
AutoModel.from_pretrained(saved_dir)`` must work. So `install` registers hfmtl's classes the moment
transformers' Auto modules finish loading, or at once if they already have:

- ``configuration_auto``: `MultiTaskConfig` (importing it registers it with `AutoConfig`);
- ``modeling_auto``: a stand-in that loads `MultiTaskModel` on first use. Importing hfmtl's modeling
  right there could re-enter a half-imported package (peft imports transformers' Auto modules on its
  way in, and hfmtl's modeling imports peft), so the stand-in waits for a call; importing
  `hfmtl.model` replaces it with the real class.

Written here rather than taken from a library: transformers registers classes only by object, and has
no hook for a package that wants to be found without being imported first.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from collections.abc import Callable
from typing import Any

_CONFIG_AUTO = "transformers.models.auto.configuration_auto"
_MODEL_AUTO = "transformers.models.auto.modeling_auto"


def _register_config() -> None:
    importlib.import_module("hfmtl.model.configuration")  # registers itself with AutoConfig


def _register_model() -> None:
    from transformers import AutoModel

    from .model.configuration import MultiTaskConfig

    class MultiTaskModelOnDemand:
        """Stands for `hfmtl.model.MultiTaskModel` in AutoModel's table until hfmtl.model is imported."""

        config_class = MultiTaskConfig

        @staticmethod
        def _real() -> Any:
            return importlib.import_module("hfmtl.model.modeling").MultiTaskModel

        @classmethod
        def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
            return cls._real().from_pretrained(*args, **kwargs)

        @classmethod
        def _from_config(cls, *args: Any, **kwargs: Any) -> Any:
            return cls._real()._from_config(*args, **kwargs)

    if "hfmtl.model.modeling" not in sys.modules:  # else the real class is registered already
        AutoModel.register(MultiTaskConfig, MultiTaskModelOnDemand, exist_ok=True)


_HOOKS: dict[str, Callable[[], None]] = {_CONFIG_AUTO: _register_config, _MODEL_AUTO: _register_model}


class _RunAfter(importlib.abc.Loader):
    """A module's own loader, then a callback once the module is complete."""

    def __init__(self, loader: Any, callback: Callable[[], None]):
        self.loader, self.callback = loader, callback

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        self.callback()

    def __getattr__(self, name: str) -> Any:  # get_source, is_package...: the real loader's
        return getattr(self.loader, name)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader the other finders give for a module that has a hook."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        callback = _HOOKS.get(fullname)
        if callback is None:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            del _HOOKS[fullname]
            spec.loader = _RunAfter(spec.loader, callback)
        return spec


def install() -> None:
    """Register now what transformers has loaded already; hook the rest (idempotent)."""
    for name in list(_HOOKS):
        if name in sys.modules:
            _HOOKS.pop(name)()
    if _HOOKS and not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
