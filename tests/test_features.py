"""Features a run reads by row instead of loading (activepref.core.features): rows against
numpy's own loading, streaming statistics against numpy's, the file identity a run keeps
instead of a copy, and runs on a referenced .npy (float16 included) against the same run on a
features column."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activepref.config import load_config
from activepref.core.features import FeatureMatrix, NpyLayout, moments, read_rows, scan_features, verify_identity
from activepref.core.runs import create_run, resume, run
from activepref.core.store import RunStore
from activepref.errors import PoolFormatError, RunStateError
from activepref.pools.sources import synthetic_pool, write_pool

DTYPES = ["float16", "float32", "float64"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 40), d=st.integers(1, 9), dtype=st.sampled_from(DTYPES),
    picks=st.lists(st.integers(0, 10_000), min_size=0, max_size=60), seed=st.integers(0, 2**16),
)
def test_rows_read_from_the_file_equal_numpys_load(tmp_path: Path, n: int, d: int, dtype: str, picks: list[int], seed: int) -> None:
    """Any index list (unsorted, repeats, adjacent runs) gives numpy's rows in that order, as float32."""
    matrix = np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)
    path = tmp_path / f"m-{n}-{d}-{dtype}.npy"
    np.save(path, matrix)
    idx = np.asarray([p % n for p in picks], dtype=np.int64)
    got = read_rows(NpyLayout.read(path), idx)
    assert got.dtype == np.float32 and got.shape == (len(idx), d)
    np.testing.assert_array_equal(got, np.load(path)[idx].astype(np.float32))


def test_out_of_range_rows_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "m.npy", np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(IndexError):
        read_rows(NpyLayout.read(tmp_path / "m.npy"), np.array([0, 3]))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 50), d=st.integers(1, 6), blocks=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_streaming_moments_equal_numpy(rows: int, d: int, blocks: int, seed: int) -> None:
    x = np.random.default_rng(seed).normal(loc=3.0, scale=2.0, size=(rows, d))
    cuts = np.array_split(x, blocks)
    mean, std = moments(cuts, d)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=0), rtol=1e-7, atol=1e-9)


def test_scan_hashes_the_file_and_computes_statistics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("activepref.core.features.SCAN_BYTES", 64)  # many small blocks
    x = np.random.default_rng(0).normal(size=(37, 5)).astype(np.float16)
    np.save(tmp_path / "f.npy", x)
    scan = scan_features(tmp_path / "f.npy")
    assert scan.identity.sha256 == hashlib.sha256((tmp_path / "f.npy").read_bytes()).hexdigest()
    assert (scan.identity.rows, scan.identity.dim, scan.identity.dtype) == (37, 5, "<f2")
    np.testing.assert_allclose(scan.mean, x.astype(np.float64).mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(scan.std, x.astype(np.float64).std(axis=0), rtol=1e-7)


def test_a_nan_names_its_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("activepref.core.features.SCAN_BYTES", 16)
    x = np.ones((10, 2), dtype=np.float32)
    x[7, 1] = np.nan
    np.save(tmp_path / "f.npy", x)
    with pytest.raises(PoolFormatError, match=r"f\.npy.*row 7.*features.*NaN"):
        scan_features(tmp_path / "f.npy")


@pytest.mark.parametrize("matrix", [np.zeros((4,), np.float32), np.zeros((2, 2), np.int32), np.asfortranarray(np.zeros((3, 2), np.float32))])
def test_unusable_matrices_are_refused_with_the_file_named(tmp_path: Path, matrix: np.ndarray) -> None:
    np.save(tmp_path / "bad.npy", matrix)
    with pytest.raises(PoolFormatError, match="bad.npy"):
        NpyLayout.read(tmp_path / "bad.npy")


def test_identity_check_passes_a_touch_and_refuses_a_change(tmp_path: Path) -> None:
    path = tmp_path / "f.npy"
    np.save(path, np.arange(12, dtype=np.float32).reshape(6, 2))
    identity = scan_features(path).identity
    verify_identity(identity)
    os.utime(path, ns=(1, 1))  # same bytes, other mtime: hashed again, accepted
    verify_identity(identity)
    np.save(path, np.arange(12, dtype=np.float32).reshape(6, 2) + 1)
    with pytest.raises(RunStateError, match="changed since the run was created"):
        verify_identity(identity)
    path.unlink()
    with pytest.raises(RunStateError, match="is gone"):
        verify_identity(identity)


def test_feature_matrix_standardises_rows_like_the_whole_matrix(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(20, 3)).astype(np.float32)
    np.save(tmp_path / "f.npy", x)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    on_disk = FeatureMatrix(NpyLayout.read(tmp_path / "f.npy"), mean, scale)
    in_memory = FeatureMatrix(x, mean, scale)
    idx = np.array([5, 1, 1, 19])
    expected = (x[idx] - mean) / scale
    np.testing.assert_array_equal(on_disk[idx].numpy(), expected)
    np.testing.assert_array_equal(in_memory[idx].numpy(), expected)
    assert on_disk.shape == (20, 3) and len(on_disk) == 20
    starts = [s for s, _ in on_disk.chunks(chunk_bytes=40)]
    assert starts == list(range(0, 20, 3))


def _pools(tmp_path: Path, dtype: str) -> tuple[dict[str, str], dict[str, str]]:
    pool = synthetic_pool(n_prompts=48, candidates=4, dim=8, seed=3)
    if dtype == "float16":  # the column carries the same (rounded) values the .npy holds
        pool.features = pool.features.astype(np.float16).astype(np.float32)
    column = write_pool(pool, tmp_path / "column.parquet")
    referenced = write_pool(pool, tmp_path / "referenced.parquet", features_file=tmp_path / "feats.npy", features_dtype=dtype)
    return {"pool": str(column)}, {"pool": str(referenced), "features": str(tmp_path / "feats.npy")}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_run_references_the_npy_and_selects_exactly_as_with_a_features_column(tmp_path: Path, dtype: str) -> None:
    column, referenced = _pools(tmp_path, dtype)
    common = {"method": "dts", "batch_size": 6, "iterations": 3, "eval_fraction": 0.2, "seed": 5}
    run(load_config(None, {**common, **column}), tmp_path / "a")
    run(load_config(None, {**common, **referenced}), tmp_path / "b")
    assert (tmp_path / "a" / "features.npy").exists()
    assert not (tmp_path / "b" / "features.npy").exists()  # no copy: a reference and a checksum
    with RunStore.open_readonly(tmp_path / "a") as a, RunStore.open_readonly(tmp_path / "b") as b:
        identity = b.features_file()
        assert identity is not None and identity.sha256 == hashlib.sha256((tmp_path / "feats.npy").read_bytes()).hexdigest()
        assert a.features_file() is None
        assert [tuple(p)[:4] for p in a.preference_rows()] == [tuple(p)[:4] for p in b.preference_rows()]
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "feature_stats.npz")["mean"], np.load(tmp_path / "b" / "feature_stats.npz")["mean"])


def test_resume_refuses_a_changed_features_file(tmp_path: Path) -> None:
    _, referenced = _pools(tmp_path, "float32")
    cfg = load_config(None, {"method": "random", "batch_size": 6, "iterations": 2, "eval_fraction": 0.2, **referenced})
    create_run(cfg, tmp_path / "r").close()  # as if killed before its first iteration
    feats = np.load(tmp_path / "feats.npy")
    np.save(tmp_path / "feats.npy", feats[:, ::-1].copy())  # same shape and size, other bytes
    with pytest.raises(RunStateError, match="changed since the run was created"):
        resume(tmp_path / "r")
