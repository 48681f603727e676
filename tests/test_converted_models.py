"""Converted copies of GGUF models (activepref.backends.converted_models): bit-identical to the
GGUF load, used by the next load instead of converting again, rebuilt when damaged or when the
GGUF changes, and never in the way when they cannot be written or are turned off.

One GGUF conversion for the whole module (~20 s on two cores): the tests share it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from activepref.backends import converted_models, transformers_local
from activepref.backends.transformers_local import clear_model_cache, load_model
from activepref.live.local_models import smollm2_gguf

TEXTS = ["Hello world, how are you?", "  leading spaces\n\n and unicode: café — 日本語 🙂", "<|im_start|>user\nhi<|im_end|>"]


class Converted:
    """A copy of SmolLM2's GGUF in its own folder, its cache root, the first load_model result
    and what the GGUF load itself gave (captured inside that first load)."""

    def __init__(self, root: Path) -> None:
        folder, name = smollm2_gguf()
        self.folder, self.name = root / "gguf", name
        self.folder.mkdir()
        shutil.copy(Path(folder) / name, self.folder / name)  # its own file: its modification time can change
        self.cache = root / "cache"
        self.conversions: list[object] = []  # what each GGUF conversion returned


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    state = Converted(tmp_path_factory.mktemp("converted"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(converted_models.ENV, str(state.cache))
        mp.setattr(transformers_local, "load_gguf", _counting(state))
        clear_model_cache()
        state.first = load_model(str(state.folder), state.name)
        yield state, mp
    clear_model_cache()


def _counting(state: Converted):
    real = converted_models.load_gguf

    def load(model, gguf_file, dtype_name, dtype, model_class, auto, convert):
        def counted():
            result = convert()
            state.conversions.append(result)
            return result
        return real(model, gguf_file, dtype_name, dtype, model_class, auto, counted)

    return load


def _same(a, b) -> None:
    (net_a, tok_a), (net_b, tok_b) = a, b
    sa, sb = net_a.state_dict(), net_b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(tok_a(t)["input_ids"] == tok_b(t)["input_ids"] for t in TEXTS)
    messages = [{"role": "user", "content": "Write a haiku."}]
    assert tok_a.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        tok_b.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (tok_a.eos_token, tok_a.pad_token) == (tok_b.eos_token, tok_b.pad_token)
    ids = tok_a(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(net_a(**ids).logits, net_b(**ids).logits)


def test_the_copy_is_bit_identical_to_the_gguf_load(converted):
    state, _ = converted
    assert len(state.conversions) == 1
    copies = list(state.cache.iterdir())
    assert len(copies) == 1 and (copies[0] / converted_models.DONE).is_file()  # no .tmp folder left behind
    _same((state.first.model, state.first.tokenizer), state.conversions[0])
    assert not hasattr(state.first.model.config, "quantization_config")  # plain float weights, as every later load


def test_the_next_load_reads_the_copy(converted):
    state, _ = converted
    clear_model_cache()  # a new process, as far as loading goes
    again = load_model(str(state.folder), state.name)
    assert len(state.conversions) == 1
    _same((again.model, again.tokenizer), (state.first.model, state.first.tokenizer))


def test_a_damaged_copy_is_removed_not_trusted(converted, tmp_path):
    state, _ = converted
    (copy,) = state.cache.iterdir()
    damaged = tmp_path / "damaged"
    shutil.copytree(copy, damaged)  # the shared copy stays intact: loaded models map its pages
    (damaged / "model.safetensors").unlink()
    (damaged / "model.safetensors").write_bytes(b"not a safetensors file")
    import transformers

    assert converted_models.load_copy(damaged, transformers.AutoModelForCausalLM, torch.float32) is None
    assert not damaged.exists()
    unfinished = tmp_path / "unfinished"
    shutil.copytree(copy, unfinished)
    (unfinished / converted_models.DONE).unlink()  # killed before its last file: not a copy
    assert converted_models.load_copy(unfinished, transformers.AutoModelForCausalLM, torch.float32) is None


def test_a_changed_gguf_gets_another_copy(converted):
    state, _ = converted
    before = converted_models.copy_dir(str(state.folder), state.name, "float32", "causal_lm")
    assert before is not None and before.exists()
    assert converted_models.copy_dir(str(state.folder), state.name, "bfloat16", "causal_lm") != before
    assert converted_models.copy_dir(str(state.folder), state.name, "float32", "base") != before
    gguf = state.folder / state.name
    os.utime(gguf, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 10**9))
    assert converted_models.copy_dir(str(state.folder), state.name, "float32", "causal_lm") != before


def test_turned_off_remote_or_unwritable_means_the_gguf_load(converted, tmp_path):
    state, mp = converted
    sentinel = object()
    mp.setenv(converted_models.ENV, "off")
    assert converted_models.cache_root() is None
    assert converted_models.load_gguf(str(state.folder), state.name, "float32", torch.float32, "causal_lm", None, lambda: sentinel) is sentinel
    mp.setenv(converted_models.ENV, str(state.cache))
    assert converted_models.copy_dir("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "x.gguf", "float32", "causal_lm") is None  # not local

    # a temporary folder that a killed conversion left an hour ago goes; a fresh one (in progress) stays
    copy = converted_models.copy_dir(str(state.folder), state.name, "float32", "causal_lm")
    old, fresh = (state.cache / f"{copy.name}.{tag}.tmp" for tag in ("old", "fresh"))
    old.mkdir()
    fresh.mkdir()
    os.utime(old, (0, 0))
    converted_models._remove_abandoned(copy)
    assert not old.exists() and fresh.exists()
    fresh.rmdir()

    # a finished copy nobody loaded for 30 days goes when another is written; one in use stays
    in_use = [d for d in state.cache.iterdir() if (d / converted_models.DONE).is_file()]
    stale = state.cache / "OldModel-causal_lm-float32-0123456789abcdef"
    stale.mkdir()
    (stale / converted_models.DONE).write_text("{}")
    os.utime(stale / converted_models.DONE, (0, 0))
    converted_models._remove_unused(state.cache)
    assert not stale.exists() and in_use and all(d.exists() for d in in_use)

    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    assert not converted_models.write_copy(blocked / "copy", state.first.model, state.first.tokenizer, "test")
    assert blocked.read_text() == "x"


def test_weights_left_quantised_are_not_copied(converted, tmp_path):
    state, mp = converted
    mp.setenv(converted_models.ENV, str(tmp_path / "cache"))
    packed = torch.nn.Linear(2, 2)
    packed.register_buffer("blocks", torch.zeros(4, dtype=torch.uint8))  # what a GGUF load that keeps Q4 blocks holds
    result = (packed, state.first.tokenizer)
    got = converted_models.load_gguf(str(state.folder), state.name, "float32", torch.float32, "causal_lm", None, lambda: result)
    assert got[0] is packed and got[1] is state.first.tokenizer
    assert not (tmp_path / "cache").exists()


def test_a_copy_that_does_not_reproduce_the_gguf_load_is_dropped(converted, tmp_path):
    import copy

    state, mp = converted
    net, tok = state.first.model, state.first.tokenizer
    assert converted_models._differs(net, tok, net, tok) is None
    other = copy.deepcopy(net)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3
    assert converted_models._differs(net, tok, other, tok) == "weights"
    del other
    left = copy.deepcopy(tok)
    left.padding_side = "left" if tok.padding_side != "left" else "right"
    assert converted_models._differs(net, tok, net, left) == "padding_side"

    # load_gguf keeps no copy that differs, and returns the GGUF load itself
    mp.setenv(converted_models.ENV, str(tmp_path / "cache"))
    mp.setattr(converted_models, "_differs", lambda *a: "token ids of 'x'")
    import transformers

    result = (net, tok)
    got = converted_models.load_gguf(str(state.folder), state.name, "float32", torch.float32, "causal_lm",
                                     transformers.AutoModelForCausalLM, lambda: result)
    assert got[0] is net and got[1] is tok and list((tmp_path / "cache").iterdir()) == []


def test_a_disk_that_refuses_the_weights_costs_only_the_speed_up(converted, tmp_path, monkeypatch):
    state, _ = converted
    import safetensors.torch

    def full(*_a, **_k):
        raise safetensors.SafetensorError("No space left on device (os error 28)")  # not an OSError

    monkeypatch.setattr(safetensors.torch, "save_model", full)
    target = tmp_path / "cache" / "copy"
    assert not converted_models.write_copy(target, state.first.model, state.first.tokenizer, "test")
    assert list((tmp_path / "cache").iterdir()) == []  # its temporary folder went too


def test_a_copy_is_flushed_before_it_appears_and_checked_against_its_manifest(converted, tmp_path, monkeypatch):
    """Every file and the folder are fsynced before the rename makes the copy visible, and a
    copy missing a file the loader would quietly do without (generation_config.json: the
    defaults) or holding a file cut short is refused, not trusted."""
    import json

    import transformers

    state, _ = converted
    (copy,) = state.cache.iterdir()
    listed = json.loads((copy / converted_models.DONE).read_text())["files"]
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= set(listed)
    assert all((copy / name).stat().st_size == size for name, size in listed.items())

    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))[1])
    renamed: list[int] = []
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: (renamed.append(len(synced)), real_rename(a, b))[1])
    target = tmp_path / "cache" / "fresh"
    assert converted_models.write_copy(target, state.first.model, state.first.tokenizer, "src")
    (before,) = renamed
    names = {Path(p).name for p in synced[:before]}
    assert names >= {*listed, converted_models.DONE} and any(p.endswith(".tmp") for p in synced[:before])
    assert synced[before:] == [str(target.parent)]

    for damage in ("missing", "short"):
        broken = tmp_path / damage
        shutil.copytree(target, broken)
        if damage == "missing":
            (broken / "generation_config.json").unlink()
        else:
            with open(broken / "tokenizer.json", "r+b") as fh:
                fh.truncate(10)
        assert converted_models.load_copy(broken, transformers.AutoModelForCausalLM, torch.float32) is None
        assert not broken.exists()
    assert converted_models.load_copy(target, transformers.AutoModelForCausalLM, torch.float32) is not None
