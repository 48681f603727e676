"""Settings for the whole test session."""

from __future__ import annotations

import os
import shutil
import tempfile

from activepref.backends.converted_models import ENV as MODEL_CACHE_ENV


def pytest_configure(config) -> None:  # type: ignore[no-untyped-def]
    """Converted GGUF copies (activepref.backends.converted_models) go to a folder of this session,
    not the user's ~/.cache: the first load of a model converts it, every later one in the
    session (xdist workers and the CLI's subprocesses inherit the variable) reads the copy."""
    if MODEL_CACHE_ENV not in os.environ:
        path = tempfile.mkdtemp(prefix="activepref-models-")
        os.environ[MODEL_CACHE_ENV] = path
        config._activepref_model_cache = path


def pytest_unconfigure(config) -> None:  # type: ignore[no-untyped-def]
    path = getattr(config, "_activepref_model_cache", None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop(MODEL_CACHE_ENV, None)
