"""Converted copies of local GGUF models, so that only the first load pays for the conversion.

transformers reads a GGUF file by dequantising every tensor and rebuilding the tokenizer from
the file's vocabulary: about 26 s for SmolLM2-135M on two cores, at every process start (a run,
each ``resume``, every test that loads it). The first load therefore saves what it built (float
weights as safetensors, the config without its GGUF quantisation mark, the generation config and
the tokenizer files) in a folder under ``$ACTIVEPREF_MODEL_CACHE`` (default
``~/.cache/activepref/models/converted``, beside the assembled Qwen GGUF); every load, the first
included, then reads that folder, which takes well under a second. The weights, tokens, chat
template and logits are bit-identical to the GGUF load (``tests/test_converted_models.py``).

A folder's name carries a digest of the GGUF's absolute path, size and modification time, the
dtype, the model class and the transformers version, so a changed file or library converts
again. It is written under a temporary name, flushed to disk with a manifest of its files'
sizes, and renamed when complete, so a killed conversion or a power cut leaves nothing
half-written (a temporary folder is removed by the next conversion of that file once an hour
old); a folder whose files do not match its manifest, or that fails to load, is removed and
rebuilt; copies no process has loaded for 30 days are removed when another copy is written.
Where no copy can be written (a read-only or full disk) the GGUF load is used as before.
``ACTIVEPREF_MODEL_CACHE=off`` turns copies off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV = "ACTIVEPREF_MODEL_CACHE"
OFF = ("off", "0", "false", "no")
DONE = "activepref-converted.json"  # written last, so a folder without it is not a finished copy
ABANDONED_S = 3600.0
UNUSED_S = 30 * 86400.0


def cache_root() -> Path | None:
    """Where converted copies live, or None when turned off."""
    env = os.environ.get(ENV)
    if env is not None and env.strip().lower() in OFF:
        return None
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "activepref" / "models" / "converted"


def copy_dir(model: str, gguf_file: str, dtype: str, model_class: str) -> Path | None:
    """The folder of this GGUF's converted copy, or None (copies off, or not a local file)."""
    root = cache_root()
    source = Path(model) / gguf_file
    if root is None or not source.is_file():
        return None
    import transformers

    stat = source.stat()
    key = json.dumps([str(source.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino, dtype, model_class, transformers.__version__])
    return root / f"{source.stem}-{model_class}-{dtype}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def load_copy(folder: Path, auto: Any, dtype: Any) -> tuple[Any, Any] | None:
    """(model, tokenizer) from a finished copy; None when there is none or it is damaged (then removed)."""
    if not (folder / DONE).is_file():
        return None
    import transformers

    problem = _incomplete(folder)  # an optional file (generation_config.json) missing would load with defaults
    if problem is not None:
        log.warning("converted model copy %s is incomplete (%s); converting the GGUF again", folder, problem)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        net = auto.from_pretrained(str(folder), dtype=dtype)
    except Exception as exc:  # a truncated or tampered copy: convert again
        log.warning("converted model copy %s does not load (%s: %s); converting the GGUF again", folder, type(exc).__name__, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    try:
        os.utime(folder / DONE)  # last use: what _remove_unused goes by
    except OSError:
        pass  # a read-only cache still serves
    return net, tokenizer


def write_copy(folder: Path, net: Any, tokenizer: Any, source: str) -> bool:
    """Save a GGUF-loaded model and its tokenizer as a finished copy; False (and a warning)
    when the disk refuses. Another process that finished first wins; this one's copy is dropped."""
    import copy

    from safetensors.torch import save_model

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(folder)
        _remove_unused(folder.parent)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".tmp", dir=folder.parent))
    except OSError as exc:
        log.warning("cannot keep a converted copy of %s under %s (%s); each load converts it again", source, folder.parent, exc)
        return False
    try:
        config = copy.deepcopy(net.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights saved here are plain floats
        config.save_pretrained(str(tmp))
        if getattr(net, "generation_config", None) is not None:
            net.generation_config.save_pretrained(str(tmp))
        save_model(net, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(tmp))
        files = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / DONE).write_text(json.dumps({"source": source, "files": files}), encoding="utf-8")
        for name in [*files, DONE]:  # on disk before the rename makes the copy visible: a power cut
            _fsync(tmp / name)  # never leaves a finished-looking folder with empty or missing files
        _fsync(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; a cache shared between users must be readable
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / DONE).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent load finished the same copy first
        _fsync(folder.parent)
        return True
    except Exception as exc:  # a full disk: OSError, or safetensors' own SafetensorError
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning("cannot keep a converted copy of %s (%s); each load converts it again", source, exc)
        return False


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') writes to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _incomplete(folder: Path) -> str | None:
    """Why a finished copy is not whole (a file its manifest lists is missing or of another
    size), or None. Copies written before the manifest existed list no files."""
    try:
        files = json.loads((folder / DONE).read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError) as exc:
        return f"unreadable {DONE} ({exc})"
    for name, size in files.items():
        try:
            have = (folder / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if have != size:
            return f"{name} has {have} bytes, not {size}"
    return None


def _remove_abandoned(folder: Path) -> None:
    """Remove this copy's temporary folders that a killed process left (untouched for an hour:
    a conversion in progress elsewhere writes to its folder every few seconds)."""
    for tmp in folder.parent.glob(folder.name + ".*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > ABANDONED_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _remove_unused(root: Path) -> None:
    """Remove finished copies nobody has loaded for UNUSED_S (a GGUF that was replaced, or a
    transformers version no longer installed, leaves its copy behind: 0.5-2 GB each)."""
    for done in root.glob(f"*/{DONE}"):
        try:
            if time.time() - done.stat().st_mtime > UNUSED_S:
                shutil.rmtree(done.parent, ignore_errors=True)
        except OSError:
            pass


def load_gguf(model: str, gguf_file: str, dtype_name: str, dtype: Any, model_class: str, auto: Any,
              convert: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
    """(model, tokenizer) of a GGUF: from its converted copy, made first with ``convert()`` (the
    plain GGUF load) when missing. Without a copy (off, remote, unwritable, weights that stayed
    quantised, or a copy that does not reproduce the GGUF load) ``convert()``'s result."""
    folder = copy_dir(model, gguf_file, dtype_name, model_class)
    if folder is None:
        return convert()
    found = load_copy(folder, auto, dtype)
    if found is not None:
        return found
    net, tokenizer = convert()
    if not all(t.dtype.is_floating_point for t in net.state_dict().values()):
        return net, tokenizer  # weights kept packed (a quantised matmul kernel): nothing plain to copy
    if write_copy(folder, net, tokenizer, str(Path(model) / gguf_file)):
        found = load_copy(folder, auto, dtype)  # the same object kind on every load, the first included
        if found is not None:
            problem = _differs(net, tokenizer, *found)
            if problem is None:
                return found
            log.warning("the converted copy of %s differs from the GGUF load (%s); loading the GGUF each time", gguf_file, problem)
            shutil.rmtree(folder, ignore_errors=True)
    return net, tokenizer


PROBES = ("Hello world, how are you?", "  two  spaces\n\ttab, café — 日本語 🙂 <|im_end|>", "def f(x):\n    return x ** 2\n")


def _differs(net: Any, tokenizer: Any, copy_net: Any, copy_tokenizer: Any) -> str | None:
    """Why the copy would not behave as the GGUF load, or None: checked once, when a copy is
    written (weights bit for bit, token ids of a few probes, the chat template, special tokens)."""
    import torch

    ours, theirs = net.state_dict(), copy_net.state_dict()
    if ours.keys() != theirs.keys() or not all(torch.equal(ours[k], theirs[k]) for k in ours):
        return "weights"
    for text in PROBES:
        if tokenizer(text)["input_ids"] != copy_tokenizer(text)["input_ids"]:
            return f"token ids of {text!r}"
    if getattr(tokenizer, "chat_template", None) != getattr(copy_tokenizer, "chat_template", None):
        return "chat template"
    for attr in ("eos_token", "bos_token", "pad_token", "padding_side"):
        if getattr(tokenizer, attr, None) != getattr(copy_tokenizer, attr, None):
            return attr
    return None
