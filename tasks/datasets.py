"""Tonic event datasets as fixed-length frame sequences: SHD, N-MNIST and DVS Gesture.

:func:`load` wraps Tonic's dataset classes and turns every recording into a time-first float32 frame
sequence ``[T, n_in]`` with ``tonic.transforms.ToFrame(sensor_size, n_time_bins=T)``; :func:`collate`
and :func:`loader` batch them to ``[T_max, B, n_in]`` with zero padding.

On-disk layout (Tonic's own; ``root`` is what Tonic calls ``save_to``)::

    root/SHD/shd_train.h5.zip           archive (Tonic only checks that it exists)
    root/SHD/shd_train.h5               spikes/times [s], spikes/units, labels, extra/keys, extra/speaker
    root/NMNIST/train.zip
    root/NMNIST/Train/<digit>/*.bin     5-byte events; the label is the folder's last character
    root/DVSGesture/ibmGestureTrain.tar.gz
    root/DVSGesture/ibmGestureTrain/user<NN>_<lighting>/<label>.npy   [N, 4] = (x, y, p, t[ms])

(test split: ``shd_test.h5``, ``test.zip`` + ``Test/``, ``ibmGestureTest.tar.gz`` + ``ibmGestureTest/``).

Nothing is downloaded implicitly: a missing or incomplete dataset raises :class:`FileNotFoundError`
naming the folder, the files expected and the opt-in flag; only ``download=True`` (CLI ``--download``)
lets Tonic fetch it. Presence is checked the way Tonic checks it (archive present and at least
``min_files`` extracted files, Tonic's thresholds by default), so whatever Tonic accepts offline is
accepted here and nothing else.

Binning semantics (Tonic 1.7's ``n_time_bins`` slicing, kept as is): bins have width
``w = (t_last - t_first) // T`` (µs) and start at the first event, bin ``i`` holding
``t_first + i w <= t < t_first + (i + 1) w``; events at or after ``t_first + T w`` (always including
the last event) fall in no bin, and a recording shorter than ``T`` µs gives empty frames. Frames hold
event counts per (polarity, y, x) flattened in that order (SHD: per unit). Events are sorted by time
first when a file is not (Tonic's slicing assumes sorted timestamps).

``downsample=k`` pools ``k`` neighbouring units (SHD) or ``k x k`` pixel blocks (cameras) by summing
their counts: the event coordinates are floor-divided by ``k`` before binning, so the sensor becomes
``ceil(W / k) x ceil(H / k)``. This is ``tonic.transforms.Downsample(spatial_factor=1/k)`` done in
integer arithmetic, which avoids the float truncation of ``x * (1/k)`` for factors that are not
powers of two.

Caching: with ``cache_dir`` each binned sample is written once, atomically (temporary file, then
``os.replace``), to ``cache_dir/<name>_<split>_T<T>_ds<k>_<key>/<index>.pt`` where ``key`` hashes the
binning parameters, the dataset location and the number of samples; later loads read the frames back
instead of re-binning. Each file also records its source recording and is re-binned when that no
longer matches. Clear the folder by hand when the data themselves change in place.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .._io import atomic_torch_save, atomic_write

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "EventFrames",
    "collate",
    "dataset_info",
    "load",
    "loader",
    "n_classes",
    "n_in",
    "sensor_size",
]

PathLike = Union[str, "os.PathLike[str]"]

# Bump when the cached file format or the binning changes, so old caches are not read back.
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one dataset, available without touching any file.

    ``sensor_size`` is Tonic's ``(W, H, P)`` (SHD: ``(700, 1, 1)``: 700 units, no y, one polarity).
    The ``train_*``/``test_*`` names are those Tonic looks for inside ``root/<tonic_class>/``.
    """

    name: str
    tonic_class: str
    sensor_size: tuple[int, int, int]
    n_classes: int
    default_time_bins: int
    train_archive: str
    test_archive: str
    train_data: str
    test_data: str
    file_type: str
    min_files: int
    layout: str

    @property
    def n_in(self) -> int:
        """Features per frame without downsampling (``W * H * P``)."""
        w, h, p = self.sensor_size
        return w * h * p

    def pooled_sensor_size(self, downsample: Optional[int] = None) -> tuple[int, int, int]:
        """Sensor size ``(W', H', P)`` after pooling ``downsample`` units / pixels per axis."""
        k = _check_downsample(downsample)
        w, h, p = self.sensor_size
        # SHD has no y axis: its height stays 1 instead of being divided.
        return (math.ceil(w / k), h if h == 1 else math.ceil(h / k), p)

    def n_in_for(self, downsample: Optional[int] = None) -> int:
        """Features per frame after pooling by ``downsample``."""
        w, h, p = self.pooled_sensor_size(downsample)
        return w * h * p


DATASETS: dict[str, DatasetInfo] = {
    "shd": DatasetInfo(
        name="shd", tonic_class="SHD", sensor_size=(700, 1, 1), n_classes=20, default_time_bins=100,
        train_archive="shd_train.h5.zip", test_archive="shd_test.h5.zip",
        train_data="shd_train.h5", test_data="shd_test.h5", file_type=".h5", min_files=1,
        layout="an HDF5 file with spikes/times (s), spikes/units, labels, extra/keys, extra/speaker",
    ),
    "nmnist": DatasetInfo(
        name="nmnist", tonic_class="NMNIST", sensor_size=(34, 34, 2), n_classes=10, default_time_bins=30,
        train_archive="train.zip", test_archive="test.zip", train_data="Train", test_data="Test",
        file_type=".bin", min_files=10000,
        layout="<digit>/*.bin recordings (N-MNIST's 5-byte event format)",
    ),
    "dvsgesture": DatasetInfo(
        name="dvsgesture", tonic_class="DVSGesture", sensor_size=(128, 128, 2), n_classes=11,
        default_time_bins=100, train_archive="ibmGestureTrain.tar.gz", test_archive="ibmGestureTest.tar.gz",
        train_data="ibmGestureTrain", test_data="ibmGestureTest", file_type=".npy", min_files=100,
        layout="user<NN>_<lighting>/<label>.npy arrays [N, 4] = (x, y, p, t in ms)",
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``"shd"``, ``"nmnist"`` or ``"dvsgesture"`` (case-insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__}")
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[key]


def n_in(name: str, downsample: Optional[int] = None) -> int:
    """Input features per frame of dataset ``name`` after pooling by ``downsample``."""
    return dataset_info(name).n_in_for(downsample)


def n_classes(name: str) -> int:
    """Number of classes of dataset ``name``."""
    return dataset_info(name).n_classes


def sensor_size(name: str, downsample: Optional[int] = None) -> tuple[int, int, int]:
    """Tonic sensor size ``(W, H, P)`` of dataset ``name`` after pooling by ``downsample``."""
    return dataset_info(name).pooled_sensor_size(downsample)


def _check_downsample(downsample: Optional[int]) -> int:
    if downsample is None:
        return 1
    if isinstance(downsample, bool) or not isinstance(downsample, (int, np.integer)):
        raise TypeError(f"downsample must be a positive int (pooling factor) or None, got {downsample!r}")
    if downsample < 1:
        raise ValueError(f"downsample must be >= 1, got {downsample}")
    return int(downsample)


# ----------------------------------------------------------------------------------------------
# Presence check and the missing-dataset error
# ----------------------------------------------------------------------------------------------


def _count_files(folder: Path, file_type: str, stop: int) -> int:
    """Files ending in ``file_type`` below ``folder``, counting no further than ``stop``."""
    n = 0
    for _dirpath, _dirs, files in os.walk(folder):
        n += sum(f.endswith(file_type) for f in files)
        if n >= stop:
            break
    return n


def _missing(info: DatasetInfo, location: Path, train: bool, min_files: int) -> list[str]:
    """What is missing for Tonic to accept the split offline (empty list: present)."""
    archive = location / (info.train_archive if train else info.test_archive)
    data = location / (info.train_data if train else info.test_data)
    missing = []
    if not archive.is_file():
        missing.append(f"{archive} (archive; Tonic checks that it exists)")
    if info.file_type == ".h5":
        # Tonic counts any .h5 in the folder but then opens this exact file.
        if not data.is_file():
            missing.append(f"{data} ({info.layout})")
    else:
        found = _count_files(data, info.file_type, min_files) if data.is_dir() else 0
        if found < min_files:
            missing.append(f"{data}/ ({info.layout}): at least {min_files} {info.file_type} files, found {found}")
    return missing


def _not_found_message(info: DatasetInfo, location: Path, train: bool, missing: list[str],
                       min_files: int) -> str:
    split = "train" if train else "test"
    archive = info.train_archive if train else info.test_archive
    data = info.train_data if train else info.test_data
    lines = [
        f"{info.name} ({split} split) not found in folder {location}.",
        f"Tonic's {info.tonic_class} expects there: {archive} and {data}"
        f"{'' if info.file_type == '.h5' else '/'} holding {info.layout}.",
        "Missing:",
        *(f"  {m}" for m in missing),
        "Nothing is downloaded implicitly: pass download=True (CLI: --download) to let Tonic download it,",
        f"or place the files there yourself (an empty {archive} is enough beside already extracted data).",
    ]
    if info.file_type != ".h5" and min_files == info.min_files:
        lines.append(f"A partial copy loads with min_files=<count> (Tonic's own threshold is {info.min_files}).")
    return "\n".join(lines)


def _open_tonic(info: DatasetInfo, root: Path, train: bool, download: bool, min_files: int):
    """Instantiate Tonic's dataset class (untransformed events), downloading only if asked."""
    import tonic.datasets

    cls = getattr(tonic.datasets, info.tonic_class)
    location = root / info.tonic_class  # Tonic's location_on_system
    missing = _missing(info, location, train, min_files)
    if missing and not download:
        raise FileNotFoundError(_not_found_message(info, location, train, missing, min_files))
    ds = cls.__new__(cls)
    if not missing:
        # Our check (possibly with a relaxed min_files) passed: never let Tonic's stricter count
        # trigger a download. An instance attribute shadows the class's method during __init__.
        ds._check_exists = lambda: True
    ds.__init__(str(root), train=train)
    ds.__dict__.pop("_check_exists", None)  # the lambda would make the dataset unpicklable (spawned workers)
    if missing:  # download=True: Tonic has fetched and extracted; confirm it is now complete
        missing = _missing(info, location, train, min_files)
        if missing:
            raise FileNotFoundError(_not_found_message(info, location, train, missing, min_files))
    return ds


# ----------------------------------------------------------------------------------------------
# Binning and the dataset
# ----------------------------------------------------------------------------------------------


class _PoolEvents:
    """Floor-divide event coordinates by ``k``: summing ``k`` (x ``k``) neighbours once binned."""

    def __init__(self, k: int):
        self.k = k

    def __call__(self, events: np.ndarray) -> np.ndarray:
        events = events.copy()
        for axis in ("x", "y"):
            if axis in events.dtype.names:
                events[axis] = events[axis] // self.k
        return events


class EventFrames(Dataset):
    """Binned event dataset: item ``i`` is ``(frames [T, n_in] float32, label int)``.

    Build it with :func:`load`. Attributes: ``name``, ``train``, ``n_time_bins``, ``downsample``,
    ``sensor_size`` (after pooling), ``n_in``, ``n_classes``, ``cache_path`` (``None`` without a
    cache), ``source`` (Tonic's dataset, raw events) and ``targets`` (all labels, read without binning).
    """

    def __init__(self, source: Any, info: DatasetInfo, *, train: bool, n_time_bins: int,
                 downsample: int, cache_path: Optional[Path]):
        import tonic.transforms

        self.source = source
        self.info = info
        self.name = info.name
        self.train = train
        self.n_time_bins = n_time_bins
        self.downsample = downsample
        self.sensor_size = info.pooled_sensor_size(downsample)
        self.n_in = info.n_in_for(downsample)
        self.n_classes = info.n_classes
        self.cache_path = cache_path
        self._pool = _PoolEvents(downsample) if downsample > 1 else None
        self._to_frame = tonic.transforms.ToFrame(sensor_size=self.sensor_size, n_time_bins=n_time_bins)
        self._len = len(source)

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return (f"EventFrames({self.name!r}, {split}, n={self._len}, T={self.n_time_bins}, "
                f"n_in={self.n_in}, downsample={self.downsample}, cache={str(self.cache_path)!r})")

    def __len__(self) -> int:
        return self._len

    @property
    def targets(self) -> list[int]:
        """All labels in index order, read without binning any recording."""
        if self.name == "shd":
            import h5py

            path = os.path.join(self.source.location_on_system, self.source.data_filename)
            with h5py.File(path, "r") as fh:
                return [int(v) for v in fh["labels"][()]]
        return [int(v) for v in self.source.targets]

    def _source_id(self, index: int) -> str:
        """Which recording item ``index`` is, stored in its cache file to detect stale caches."""
        if self.name == "shd":
            return f"{self.source.data_filename}[{index}]"
        return os.path.relpath(self.source.data[index], self.source.location_on_system)

    def bin(self, events: np.ndarray) -> torch.Tensor:
        """Bin one recording's structured events to frames ``[T, n_in]`` float32."""
        if len(events) > 1 and np.any(np.diff(events["t"]) < 0):
            events = events[np.argsort(events["t"], kind="stable")]
        if self._pool is not None:
            events = self._pool(events)
        frames = np.asarray(self._to_frame(events), dtype=np.float32)
        if frames.shape[0] != self.n_time_bins or frames.size != self.n_time_bins * self.n_in:
            raise RuntimeError(f"ToFrame returned shape {frames.shape}, expected {self.n_time_bins} frames "
                               f"of {self.sensor_size} = {self.n_in} features")
        return torch.from_numpy(np.ascontiguousarray(frames.reshape(self.n_time_bins, self.n_in)))

    def _read_cache(self, path: Path, index: int) -> Optional[tuple[torch.Tensor, int]]:
        try:
            blob = torch.load(path, weights_only=True)
            if blob.get("format") != _CACHE_FORMAT or blob.get("source") != self._source_id(index):
                return None
            frames = torch.zeros(blob["shape"], dtype=torch.float32)
            frames[blob["t"].long(), blob["c"].long()] = blob["counts"].float()
            return frames, int(blob["label"])
        except Exception:  # absent, foreign or damaged: re-bin (and overwrite)
            return None

    def _write_cache(self, path: Path, index: int, frames: torch.Tensor, label: int) -> None:
        # Frames are sparse counts: store the non-zero entries only.
        t, c = frames.nonzero(as_tuple=True)
        blob = {
            "format": _CACHE_FORMAT, "source": self._source_id(index), "shape": list(frames.shape),
            "t": t.to(torch.int32), "c": c.to(torch.int32), "counts": frames[t, c].clone(), "label": label,
        }
        atomic_torch_save(blob, path)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if isinstance(index, torch.Tensor) and index.ndim == 0:
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        index = int(index)
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"index out of range for a dataset of {self._len} samples")
        path = self.cache_path / f"{index}.pt" if self.cache_path is not None else None
        if path is not None:
            hit = self._read_cache(path, index)
            if hit is not None:
                return hit
        events, label = self.source[index]
        frames = self.bin(events)
        label = int(label)
        if path is not None:
            self._write_cache(path, index, frames, label)
        return frames, label


def _cache_folder(cache_dir: PathLike, info: DatasetInfo, location: Path, train: bool, n_time_bins: int,
                  downsample: int, n_samples: int) -> Path:
    params = {
        "format": _CACHE_FORMAT, "dataset": info.name, "train": train, "n_time_bins": n_time_bins,
        "downsample": downsample, "sensor_size": list(info.pooled_sensor_size(downsample)),
        "location": str(location.resolve()), "n_samples": n_samples,
    }
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    split = "train" if train else "test"
    folder = Path(cache_dir).expanduser() / f"{info.name}_{split}_T{n_time_bins}_ds{downsample}_{key}"
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / "params.json"
    if not meta.is_file():  # human-readable record of what the hash stands for
        atomic_write(meta, lambda fh: fh.write(json.dumps(params, indent=2, sort_keys=True) + "\n"))
    return folder


def load(
    name: str,
    root: PathLike,
    *,
    train: bool = True,
    n_time_bins: Optional[int] = None,
    downsample: Optional[int] = None,
    cache_dir: Optional[PathLike] = None,
    download: bool = False,
    min_files: Optional[int] = None,
) -> EventFrames:
    """Load SHD, N-MNIST or DVS Gesture from Tonic's layout under ``root`` as binned frames.

    Args:
        name: ``"shd"``, ``"nmnist"`` or ``"dvsgesture"``.
        root: the folder holding ``SHD/``, ``NMNIST/`` or ``DVSGesture/`` (Tonic's ``save_to``).
        train: training split (else test split).
        n_time_bins: frames per recording ``T`` (``None``: the dataset's ``default_time_bins``).
        downsample: pooling factor ``k`` (SHD: ``k`` neighbouring units; cameras: ``k x k`` pixels),
            ``None`` or 1 for none.
        cache_dir: folder for the per-sample frame cache (``None``: bin on every access).
        download: let Tonic download and extract the split when it is missing. Off by default:
            a missing split raises :class:`FileNotFoundError` naming what is expected.
        min_files: extracted files required to count the split as present (``None``: Tonic's own
            threshold, 10000 for N-MNIST and 100 for DVS Gesture); lower it to load a partial copy.

    Returns:
        :class:`EventFrames` whose items are ``(frames [T, n_in] float32, label int)``.
    """
    info = dataset_info(name)
    if not isinstance(train, bool):
        raise TypeError(f"train must be a bool, got {train!r}")
    if not isinstance(download, bool):
        raise TypeError(f"download must be a bool, got {download!r}")
    if n_time_bins is None:
        n_time_bins = info.default_time_bins
    if isinstance(n_time_bins, bool) or not isinstance(n_time_bins, (int, np.integer)):
        raise TypeError(f"n_time_bins must be a positive int, got {n_time_bins!r}")
    if n_time_bins < 1:
        raise ValueError(f"n_time_bins must be >= 1, got {n_time_bins}")
    k = _check_downsample(downsample)
    if min_files is None:
        min_files = info.min_files
    if isinstance(min_files, bool) or not isinstance(min_files, (int, np.integer)) or min_files < 1:
        raise ValueError(f"min_files must be a positive int, got {min_files!r}")
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path, got {type(root).__name__}")
    root_path = Path(root).expanduser()

    source = _open_tonic(info, root_path, train, download, int(min_files))
    cache_path = None
    if cache_dir is not None:
        cache_path = _cache_folder(cache_dir, info, root_path / info.tonic_class, train, int(n_time_bins),
                                   k, len(source))
    return EventFrames(source, info, train=train, n_time_bins=int(n_time_bins), downsample=k,
                       cache_path=cache_path)


# ----------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------


def collate(batch: Sequence[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack ``(frames [T_i, n_in], label)`` items time-first, zero-padding to the longest.

    Returns:
        ``(frames [T_max, B, n_in], labels [B] int64, lengths [B] int64)``; ``frames[t, b] = 0`` for
        ``t >= lengths[b]``.
    """
    if not isinstance(batch, (list, tuple)) or len(batch) == 0:
        raise ValueError("collate needs a non-empty list of (frames, label) items")
    frames, labels = [], []
    for i, item in enumerate(batch):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"item {i} must be a (frames, label) pair, got {type(item).__name__}")
        x, y = item
        x = torch.as_tensor(x)
        if x.ndim != 2:
            raise ValueError(f"item {i}: frames must be [T, n_in], got shape {tuple(x.shape)}")
        frames.append(x)
        labels.append(int(y))
    first = frames[0]
    for i, x in enumerate(frames):
        if x.shape[1] != first.shape[1]:
            raise ValueError(f"item {i} has {x.shape[1]} features, item 0 has {first.shape[1]}")
        if x.dtype != first.dtype or x.device != first.device:
            raise TypeError(f"item {i} is {x.dtype} on {x.device}, item 0 is {first.dtype} on {first.device}")
    lengths = torch.tensor([x.shape[0] for x in frames], dtype=torch.long)
    out = first.new_zeros((int(lengths.max()), len(frames), first.shape[1]))
    for b, x in enumerate(frames):
        out[: x.shape[0], b] = x
    return out, torch.tensor(labels, dtype=torch.long), lengths


def loader(
    dataset: Iterable,
    batch_size: int = 32,
    shuffle: bool = False,
    generator: Optional[torch.Generator] = None,
    *,
    num_workers: int = 0,
    drop_last: bool = False,
    **kwargs: Any,
) -> DataLoader:
    """A :class:`torch.utils.data.DataLoader` over ``dataset`` batching with :func:`collate`.

    Pass a seeded ``generator`` for a reproducible shuffle order; other keyword arguments go to
    ``DataLoader`` (``collate_fn`` is fixed).
    """
    if "collate_fn" in kwargs:
        raise TypeError("loader() sets collate_fn itself; use DataLoader directly for another one")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, drop_last=drop_last, collate_fn=collate, **kwargs)
