"""Optional dependencies: import them with a one-line install hint instead of a traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

from activepref.errors import ActivePrefError

EXTRA_OF = {
    "matplotlib": "plots",
    "datasets": "trl",
    "trl": "trl",
    "peft": "trl",
    "transformers": "local",
    "sentence_transformers": "local",
    "gguf": "local",
    "accelerate": "local",
    "vllm": "vllm",
    "openai": "openai",
}


class MissingExtraError(ActivePrefError):
    """An optional dependency is not installed."""


def require(module: str) -> ModuleType:
    """Import ``module`` or raise a MissingExtraError that says which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRA_OF.get(module.split(".")[0], module)
        raise MissingExtraError(f"this needs {module.split('.')[0]}: pip install 'activepref[{extra}]'") from None
