"""The candidates' feature matrix as a run reads it, without holding it in memory.

A pool's features can be far larger than the machine (seed 001: 60,000 prompts x 30
candidates x 2,560 floats = 18 GB in float32). A run therefore never loads the matrix: it
keeps a reference to a ``.npy`` file (float16 or float32, C order), reads the rows an
iteration needs with ``os.pread`` (not a memory map, whose touched pages would count
against the process's resident memory until the kernel drops them), and standardises them
on the way with per-dimension statistics computed in one streaming pass. The same pass
checks every value is finite and hashes the file, so a run can refuse a features file that
changed under it.

Shapes: n rows (one per pool row / response idx), d dimensions.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from activepref.errors import PoolFormatError, RunStateError

if TYPE_CHECKING:
    import torch

FEATURE_DTYPES = (np.dtype("<f2"), np.dtype("<f4"), np.dtype("<f8"))  # rows are served as float32
SCAN_BYTES = 64 << 20  # rows read per streaming step: ~64 MiB whatever d is
STD_EPS = 1e-6


@dataclass(frozen=True)
class NpyLayout:
    """Where a 2-D .npy matrix's data lies in its file."""

    path: Path
    rows: int
    dim: int
    dtype: np.dtype
    offset: int  # bytes before the first row

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize

    @classmethod
    def read(cls, path: str | Path) -> NpyLayout:
        """The layout of ``path``; a PoolFormatError names the file when it is not a 2-D,
        C-ordered float16/32/64 .npy matrix."""
        path = Path(path)
        try:
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = header(fh)
                offset = fh.tell()
        except FileNotFoundError:
            raise PoolFormatError(str(path), "file", None, "does not exist") from None
        except Exception as exc:
            raise PoolFormatError(str(path), "file", None, f"not a readable .npy matrix ({exc})") from None
        if len(shape) != 2 or fortran:
            raise PoolFormatError(str(path), "file", "features", f"shape {shape}{' in Fortran order' if fortran else ''}: expected a C-ordered (n, d) matrix")
        if dtype.newbyteorder("<") not in FEATURE_DTYPES or dtype.byteorder == ">":
            raise PoolFormatError(str(path), "file", "features", f"dtype {dtype}: expected little-endian float16, float32 or float64")
        return cls(path, int(shape[0]), int(shape[1]), np.dtype(dtype).newbyteorder("<"), int(offset))


def read_rows(layout: NpyLayout, idx: np.ndarray, fd: int | None = None) -> np.ndarray:
    """Rows ``idx`` (any order, repeats allowed) of the file as float32 [len(idx), d].
    Consecutive indices are read in one call, so a prompt's candidates (adjacent rows) cost
    one read."""
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if len(idx) and (idx.min() < 0 or idx.max() >= layout.rows):
        raise IndexError(f"feature rows out of range 0..{layout.rows - 1}")
    uniq, inverse = np.unique(idx, return_inverse=True)
    buf = np.empty((len(uniq), layout.dim), dtype=layout.dtype)
    if not len(uniq):
        return buf.astype(np.float32)
    own = fd is None
    fd = os.open(layout.path, os.O_RDONLY) if fd is None else fd
    try:
        breaks = np.nonzero(np.diff(uniq) != 1)[0] + 1
        for start, stop in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(uniq)]])):
            view = memoryview(buf[start:stop].reshape(-1).view(np.uint8))
            _pread_exact(fd, view, layout.offset + int(uniq[start]) * layout.row_bytes, layout.path)
    finally:
        if own:
            os.close(fd)
    return buf.astype(np.float32, copy=False)[inverse]


def _pread_exact(fd: int, view: memoryview, offset: int, path: Path) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise RunStateError(f"{path}: features file is shorter than its header says (truncated?)")
        done += n


@dataclass(frozen=True)
class FileIdentity:
    """What a run remembers of a features file it references instead of copying."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    rows: int
    dim: int
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileIdentity:
        return cls(**data)


@dataclass(frozen=True)
class FeatureScan:
    """One streaming pass over a features file: its identity and per-dimension statistics.
    mean / std: [d] float64 (population std, as ``numpy.std``)."""

    identity: FileIdentity
    mean: np.ndarray
    std: np.ndarray


def file_sha256(path: Path, block: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def scan_features(path: str | Path) -> FeatureScan:
    """Check every value of the file is finite (a PoolFormatError names the first bad row),
    hash it and compute its per-dimension mean and std, in one pass of bounded memory."""
    layout = NpyLayout.read(path)
    before = layout.path.stat()
    digest = hashlib.sha256()
    with open(layout.path, "rb") as fh:  # the header too: two files with one body but other shapes differ
        digest.update(fh.read(layout.offset))

    def blocks() -> Iterator[np.ndarray]:
        step = max(1, SCAN_BYTES // max(1, layout.row_bytes))
        fd = os.open(layout.path, os.O_RDONLY)
        try:
            for start in range(0, layout.rows, step):
                raw = np.empty((min(layout.rows, start + step) - start, layout.dim), dtype=layout.dtype)
                view = memoryview(raw.reshape(-1).view(np.uint8))
                _pread_exact(fd, view, layout.offset + start * layout.row_bytes, layout.path)
                digest.update(view)
                finite = np.isfinite(raw).all(axis=1)
                if not finite.all():
                    raise PoolFormatError(str(layout.path), f"row {start + int(np.argmin(finite))}", "features", "contains NaN or infinity")
                yield raw
        finally:
            os.close(fd)

    mean, std = moments(blocks(), layout.dim)
    identity = FileIdentity(str(layout.path.resolve()), before.st_size, before.st_mtime_ns, digest.hexdigest(), layout.rows, layout.dim, layout.dtype.str)
    return FeatureScan(identity, mean, std)


def moments(blocks: Iterable[np.ndarray], d: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension (mean, population std) [d] float64 over the rows of every block, one
    pass (sums of x and x^2 in float64)."""
    n, total, total_sq = 0, np.zeros(d), np.zeros(d)
    for block in blocks:
        b = np.asarray(block, dtype=np.float64)
        n += len(b)
        total += b.sum(axis=0)
        total_sq += np.square(b).sum(axis=0)
    mean = total / max(1, n)
    return mean, np.sqrt(np.maximum(total_sq / max(1, n) - mean**2, 0.0))


def verify_identity(identity: FileIdentity) -> None:
    """Refuse a referenced features file that is gone or whose content changed. Size and
    modification time unchanged: trusted without reading; else the file is hashed again
    (a copy or a touch with the same bytes passes)."""
    path = Path(identity.path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise RunStateError(f"the run's features file {path} is gone; put it back (sha256 {identity.sha256[:12]}...) to continue") from None
    if st.st_size == identity.size and st.st_mtime_ns == identity.mtime_ns:
        return
    if st.st_size != identity.size or file_sha256(path) != identity.sha256:  # the scan's digest is the whole file's
        raise RunStateError(
            f"the run's features file {path} changed since the run was created (sha256 was {identity.sha256[:12]}...); "
            "a run cannot continue on other features: restore the file or start a new run"
        )


class FeatureMatrix:
    """Read-only [n, d] features served by row as float32 tensors, z-scored per dimension when
    statistics are given: ``(x - mean) / scale`` in float32, scale = std + 1e-6 (the run's
    ``feature_stats.npz`` keeps mean and scale).

    Backed by a .npy file (rows read on demand, see :func:`read_rows`) or an in-memory array
    (live runs, small pools). Index it with an index array / tensor: ``features[idx]``."""

    def __init__(self, source: NpyLayout | np.ndarray, mean: np.ndarray | None = None, scale: np.ndarray | None = None) -> None:
        self.source = source
        self._fd: int | None = None
        if isinstance(source, NpyLayout):
            self.shape = (source.rows, source.dim)
        else:
            self.shape = tuple(source.shape) if source.size else (len(source), 0)
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float32)

    def __len__(self) -> int:
        return int(self.shape[0])

    def rows(self, idx: np.ndarray | torch.Tensor) -> torch.Tensor:
        """float32 [len(idx), d], standardised, in the order of ``idx``."""
        import torch  # the run store imports this module; torch only where rows are served

        idx = idx.cpu().numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
        if isinstance(self.source, NpyLayout):
            if self._fd is None:
                self._fd = os.open(self.source.path, os.O_RDONLY)
            block = read_rows(self.source, idx, self._fd)
        else:
            block = np.asarray(self.source[idx.reshape(-1)], dtype=np.float32)
        if self.mean is not None and self.scale is not None:
            block = (block - self.mean) / self.scale
        return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))

    __getitem__ = rows

    def chunks(self, chunk_bytes: int = SCAN_BYTES) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, standardised rows) over every row in order, ~chunk_bytes at a time."""
        step = max(1, chunk_bytes // max(1, 4 * max(1, self.shape[1])))
        for start in range(0, len(self), step):
            yield start, self.rows(np.arange(start, min(len(self), start + step)))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


STATS_FILE = "feature_stats.npz"


def write_feature_stats(run_dir: Path, mean: np.ndarray, std: np.ndarray) -> None:
    """Keep the z-scoring statistics in the run directory (atomically): mean and scale =
    std + 1e-6, float32 [d], so the ENN's inputs never shift when the run resumes."""
    path = Path(run_dir) / STATS_FILE
    tmp = path.with_name("feature_stats.tmp.npz")
    np.savez(tmp, mean=np.asarray(mean, dtype=np.float32), std=(np.asarray(std, dtype=np.float64) + STD_EPS).astype(np.float32))
    tmp.replace(path)


def source_stats(source: NpyLayout | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) [d] float64 of a feature source in one streaming pass."""
    if isinstance(source, NpyLayout):
        matrix = FeatureMatrix(source)
        try:
            return moments((block.numpy() for _, block in matrix.chunks()), source.dim)
        finally:
            matrix.close()
    step = 65536
    return moments((source[i : i + step] for i in range(0, len(source), step)), source.shape[1])


def load_feature_matrix(run_dir: Path, source: NpyLayout | np.ndarray, standardize: bool) -> FeatureMatrix:
    """The run's features, z-scored with the statistics kept in ``run_dir`` (computed from the
    source and kept on first use: over the pool, or over what a live run has embedded by its
    first iteration)."""
    if not standardize or (isinstance(source, np.ndarray) and not source.size):
        return FeatureMatrix(source)
    path = Path(run_dir) / STATS_FILE
    if not path.exists():
        write_feature_stats(run_dir, *source_stats(source))
    stats = np.load(path)
    return FeatureMatrix(source, stats["mean"], stats["std"])
