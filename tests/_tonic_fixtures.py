"""Tiny SHD / N-MNIST / DVS Gesture copies in Tonic's on-disk layout, plus a numpy frame oracle.

Each writer returns the events it wrote as plain arrays (``t`` in µs as Tonic will see them, ``x``,
``y``, ``p``) and the labels, so tests can bin them independently of Tonic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Recording = dict(t=µs float64, x=int, y=int, p=int, label=int)


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # Tonic only checks that the archive exists


def write_shd(root: Path, train: bool, n: int, seed: int) -> list[dict]:
    """``root/SHD/shd_<split>.h5`` (+ empty ``.zip``) with ``n`` random spike trains over 700 units."""
    import h5py

    rng = np.random.default_rng(seed)
    split = "train" if train else "test"
    folder = root / "SHD"
    _touch(folder / f"shd_{split}.h5.zip")
    recs, times, units = [], [], []
    for i in range(n):
        m = int(rng.integers(5, 40))
        # Times on a 1/1024 s grid: exact in float32 and after Tonic's * 1e6, so bin edges are exact.
        ticks = np.sort(rng.integers(0, 1024, size=m))
        t_s = (ticks / 1024.0).astype(np.float32)
        u = rng.integers(0, 700, size=m).astype(np.uint16)
        times.append(t_s)
        units.append(u)
        recs.append(dict(t=t_s.astype(np.float64) * 1e6, x=u.astype(np.int64), y=np.zeros(m, np.int64),
                         p=np.zeros(m, np.int64), label=int(rng.integers(0, 20))))
    with h5py.File(folder / f"shd_{split}.h5", "w") as fh:
        ft = fh.create_dataset("spikes/times", (n,), dtype=h5py.vlen_dtype(np.float32))
        fu = fh.create_dataset("spikes/units", (n,), dtype=h5py.vlen_dtype(np.uint16))
        for i in range(n):
            ft[i] = times[i]
            fu[i] = units[i]
        fh["labels"] = np.array([r["label"] for r in recs], dtype=np.uint16)
        fh["extra/keys"] = np.array([f"word{i}".encode() for i in range(20)])
        fh["extra/speaker"] = rng.integers(0, 12, size=n).astype(np.uint16)
    return recs


def _nmnist_bytes(x, y, p, t) -> bytes:
    """N-MNIST's 5-byte event: x, y, then p in bit 7 and a 23-bit µs timestamp (big-endian)."""
    out = np.empty((len(x), 5), dtype=np.uint8)
    t = np.asarray(t, dtype=np.int64)
    out[:, 0] = x
    out[:, 1] = y
    out[:, 2] = (np.asarray(p, dtype=np.int64) << 7) | ((t >> 16) & 0x7F)
    out[:, 3] = (t >> 8) & 0xFF
    out[:, 4] = t & 0xFF
    return out.tobytes()


def write_nmnist(root: Path, train: bool, per_digit: dict[int, int], seed: int) -> list[dict]:
    """``root/NMNIST/{Train,Test}/<digit>/<id>.bin`` (+ empty zip); ``per_digit``: files per digit.

    Returned in Tonic's order (sorted folders, sorted files). A count of 0 events is allowed.
    """
    rng = np.random.default_rng(seed)
    folder = root / "NMNIST"
    _touch(folder / ("train.zip" if train else "test.zip"))
    data = folder / ("Train" if train else "Test")
    recs = []
    for digit in sorted(per_digit):
        for j in range(per_digit[digit]):
            m = 0 if (digit, j) == (min(per_digit), 0) else int(rng.integers(5, 60))
            t = np.sort(rng.integers(0, 300_000, size=m))
            x, y, p = rng.integers(0, 34, m), rng.integers(0, 34, m), rng.integers(0, 2, m)
            path = data / str(digit) / f"{j:05d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_nmnist_bytes(x, y, p, t))
            recs.append(dict(t=t.astype(np.float64), x=x, y=y, p=p, label=digit))
    return recs


def write_dvsgesture(root: Path, train: bool, files: list[tuple[str, int]], seed: int) -> dict[str, dict]:
    """``root/DVSGesture/ibmGesture<Split>/<user_lighting>/<label>.npy`` (+ empty tar.gz).

    ``files``: (folder, label) pairs, e.g. ``("user01_led", 3)``. Arrays are [N, 4] = (x, y, p, t[ms]);
    the first file's events are deliberately not time-sorted. Tonic's order follows the directory
    listing, so the recordings are returned keyed by their path relative to the split folder.
    """
    rng = np.random.default_rng(seed)
    split = "Train" if train else "Test"
    folder = root / "DVSGesture"
    _touch(folder / f"ibmGesture{split}.tar.gz")
    data = folder / f"ibmGesture{split}"
    written = {}
    for i, (sub, label) in enumerate(files):
        m = int(rng.integers(10, 80))
        t_ms = rng.integers(0, 2000, size=m)
        if i:
            t_ms = np.sort(t_ms)
        x, y, p = rng.integers(0, 128, m), rng.integers(0, 128, m), rng.integers(0, 2, m)
        path = data / sub / f"{label}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.stack([x, y, p, t_ms], axis=1).astype(np.int64))
        written[f"{sub}/{label}.npy"] = dict(t=t_ms.astype(np.float64) * 1000.0, x=x, y=y, p=p, label=label)
    return written


def frames_oracle(rec: dict, T: int, sensor: tuple[int, int, int], k: int = 1) -> np.ndarray:
    """Independent count binning ``[T, P * H' * W']`` with Tonic 1.7's ``n_time_bins`` rule.

    Bins of width ``w = (t_last - t_first) // T`` start at the first event (after sorting by time);
    events at or beyond ``t_first + T w`` are in no bin. Coordinates are pooled by ``k``.
    """
    W, H, P = sensor
    Wk = -(-W // k)
    Hk = 1 if H == 1 else -(-H // k)
    out = np.zeros((T, P, Hk, Wk))
    t = np.asarray(rec["t"], dtype=np.float64)
    if t.size == 0:
        return out.reshape(T, -1)
    order = np.argsort(t, kind="stable")
    t = t[order]
    x = np.asarray(rec["x"])[order] // k
    y = np.asarray(rec["y"])[order] // k
    p = np.asarray(rec["p"])[order] if P > 1 else np.zeros(t.size, dtype=np.int64)
    w = (t[-1] - t[0]) // T
    for e in range(t.size):
        for b in range(T):
            if t[0] + b * w <= t[e] < t[0] + (b + 1) * w:
                out[b, p[e], y[e], x[e]] += 1
                break
    return out.reshape(T, -1)
