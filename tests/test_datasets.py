"""surroflos.tasks.datasets on tiny, hand-written copies of SHD, N-MNIST and DVS Gesture.

The copies are written in Tonic's own on-disk layout and file formats (tests/_tonic_fixtures.py), read
through Tonic by our API, and the frames are compared with an independent numpy binning of the events
that were written. Everything is offline: nothing may reach Tonic's download.
"""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import tonic.dataset
import tonic.datasets
import tonic.transforms
from _tonic_fixtures import frames_oracle, write_dvsgesture, write_nmnist, write_shd  # tests/_tonic_fixtures.py
from surroflos.tasks import datasets as D

NAMES = ["shd", "nmnist", "dvsgesture"]
DVS_FILES = [("user02_led", 4), ("user01_fluorescent", 0), ("user01_fluorescent", 7), ("user03_natural", 10)]


@pytest.fixture(autouse=True)
def _no_download(monkeypatch):
    def refuse(self):
        raise AssertionError(f"{type(self).__name__}.download() called in an offline test")

    monkeypatch.setattr(tonic.dataset.Dataset, "download", refuse)


def build(name: str, root: Path, train: bool = True, seed: int = 0):
    """Write a tiny copy of ``name``; return a function index -> recording for a loaded dataset."""
    if name == "shd":
        recs = write_shd(root, train, n=5, seed=seed)
        return lambda ds, i: recs[i]
    if name == "nmnist":
        recs = write_nmnist(root, train, {1: 2, 3: 1, 8: 2}, seed=seed)
        return lambda ds, i: recs[i]
    recs = write_dvsgesture(root, train, DVS_FILES, seed=seed)
    split = os.path.join(root, "DVSGesture", "ibmGestureTrain" if train else "ibmGestureTest")
    return lambda ds, i: recs[os.path.relpath(ds.source.data[i], split).replace(os.sep, "/")]


def _load(name, root, **kw):
    kw.setdefault("min_files", 1)  # our copies are far below Tonic's 10000 / 100 file thresholds
    return D.load(name, root, **kw)


def test_metadata_matches_tonic_classes():
    for name in NAMES:
        info = D.dataset_info(name)
        cls = getattr(tonic.datasets, info.tonic_class)
        assert tuple(cls.sensor_size) == info.sensor_size
        assert D.sensor_size(name) == info.sensor_size
        assert D.n_in(name) == int(np.prod(cls.sensor_size))
        if hasattr(cls, "classes"):
            assert len(cls.classes) == D.n_classes(name)
        archives = {getattr(cls, a) for a in dir(cls) if a.endswith(("_filename", "_zip"))}
        assert {info.train_archive, info.test_archive} <= archives
    assert D.n_classes("shd") == 20
    assert (D.n_in("shd", 4), D.n_in("nmnist", 4), D.n_in("dvsgesture", 4)) == (175, 9 * 9 * 2, 32 * 32 * 2)
    assert D.sensor_size("shd", 3) == (234, 1, 1)
    assert D.dataset_info("N-MNIST") is D.DATASETS["nmnist"]
    with pytest.raises(ValueError, match="unknown dataset"):
        D.dataset_info("cifar10dvs")
    with pytest.raises(ValueError):
        D.n_in("shd", 0)
    with pytest.raises(TypeError):
        D.n_in("shd", 1.5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("downsample", [None, 3])
def test_frames_match_numpy_binning(tmp_path, name, downsample):
    T = 7
    rec_of = build(name, tmp_path)
    ds = _load(name, tmp_path, n_time_bins=T, downsample=downsample)
    info = D.dataset_info(name)
    k = downsample or 1
    assert ds.n_in == D.n_in(name, downsample) and ds.n_classes == info.n_classes
    assert len(ds) == {"shd": 5, "nmnist": 5, "dvsgesture": len(DVS_FILES)}[name]
    binned = 0
    for i in range(len(ds)):
        frames, label = ds[i]
        rec = rec_of(ds, i)
        assert isinstance(label, int) and label == rec["label"]
        assert frames.dtype == torch.float32 and frames.shape == (T, ds.n_in)
        ref = frames_oracle(rec, T, info.sensor_size, k)
        np.testing.assert_array_equal(frames.numpy(), ref)
        binned += int(ref.sum())
        # Tonic's bins never include the last event: a recording loses at least one event.
        assert frames.sum() <= max(len(rec["t"]) - 1, 0)
    assert binned > 0
    assert ds.targets == [rec_of(ds, i)["label"] for i in range(len(ds))]
    if name == "nmnist":  # the fixture's first recording is empty: all-zero frames
        assert ds[0][0].abs().sum() == 0


def test_test_split_and_negative_index(tmp_path):
    rec_of = build("shd", tmp_path, train=False, seed=5)
    with pytest.raises(FileNotFoundError):
        _load("shd", tmp_path, train=True)
    ds = _load("shd", tmp_path, train=False, n_time_bins=4)
    np.testing.assert_array_equal(ds[-1][0].numpy(), frames_oracle(rec_of(ds, 4), 4, (700, 1, 1)))
    with pytest.raises(IndexError):
        ds[5]


def test_collate_pads_time_first():
    g = torch.Generator().manual_seed(0)
    items = [(torch.rand(L, 6, generator=g), lab) for L, lab in [(3, 1), (5, 0), (1, 4)]]
    frames, labels, lengths = D.collate(items)
    assert frames.shape == (5, 3, 6) and frames.dtype == torch.float32
    assert labels.tolist() == [1, 0, 4] and labels.dtype == torch.long
    assert lengths.tolist() == [3, 5, 1]
    for b, (x, _) in enumerate(items):
        L = x.shape[0]
        assert torch.equal(frames[:L, b], x)
        assert torch.count_nonzero(frames[L:, b]) == 0
    with pytest.raises(ValueError):
        D.collate([])
    with pytest.raises(ValueError, match="features"):
        D.collate([(torch.zeros(2, 3), 0), (torch.zeros(2, 4), 1)])
    with pytest.raises(ValueError, match=r"\[T, n_in\]"):
        D.collate([(torch.zeros(2, 3, 1), 0)])


def test_loader_batches_and_reproducible_shuffle(tmp_path):
    build("nmnist", tmp_path)
    ds = _load("nmnist", tmp_path, n_time_bins=4, downsample=2)
    batches = list(D.loader(ds, batch_size=2, shuffle=False))
    assert [b[0].shape for b in batches] == [(4, 2, 17 * 17 * 2)] * 2 + [(4, 1, 17 * 17 * 2)]
    frames, labels, lengths = batches[0]
    assert torch.equal(frames[:, 1], ds[1][0]) and labels.tolist() == [ds[0][1], ds[1][1]]
    assert lengths.tolist() == [4, 4]

    def order(seed):
        dl = D.loader(ds, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(seed))
        return next(iter(dl))[0]

    assert torch.equal(order(3), order(3))
    # Picklable, so spawned DataLoader workers can receive it.
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[2][0], ds[2][0])
    with pytest.raises(TypeError, match="collate_fn"):
        D.loader(ds, collate_fn=None)


@pytest.mark.parametrize("name", ["shd", "dvsgesture"])
def test_cache_second_load_does_not_rebin(tmp_path, monkeypatch, name):
    rec_of = build(name, tmp_path / "data")
    calls = []
    real_call = tonic.transforms.ToFrame.__call__

    def counting(self, events):
        calls.append(len(events))
        return real_call(self, events)

    monkeypatch.setattr(tonic.transforms.ToFrame, "__call__", counting)
    cache = tmp_path / "cache"
    first = _load(name, tmp_path / "data", n_time_bins=5, downsample=2, cache_dir=cache)
    a = [first[i] for i in range(len(first))]
    assert len(calls) == len(first)
    files = sorted(first.cache_path.glob("*.pt"))
    assert len(files) == len(first) and first.cache_path.parent == cache
    assert not list(first.cache_path.glob("*.tmp"))  # atomic writes leave no temporaries

    second = _load(name, tmp_path / "data", n_time_bins=5, downsample=2, cache_dir=cache)
    b = [second[i] for i in range(len(second))]
    assert len(calls) == len(first)  # every item came from the cache
    for (fa, la), (fb, lb), i in zip(a, b, range(len(a))):
        assert torch.equal(fa, fb) and la == lb
        np.testing.assert_array_equal(fb.numpy(), frames_oracle(rec_of(second, i), 5, second.info.sensor_size, 2))

    # Other binning parameters: another cache folder, binned afresh.
    third = _load(name, tmp_path / "data", n_time_bins=6, downsample=2, cache_dir=cache)
    assert third.cache_path != first.cache_path
    third[0]
    assert len(calls) == len(first) + 1

    # A damaged cache file is re-binned and rewritten, not trusted.
    files[0].write_bytes(b"not a torch file")
    fresh = _load(name, tmp_path / "data", n_time_bins=5, downsample=2, cache_dir=cache)
    assert torch.equal(fresh[0][0], a[0][0])
    assert len(calls) == len(first) + 2
    assert torch.equal(fresh[0][0], second[0][0]) and len(calls) == len(first) + 2


@pytest.mark.parametrize("name", NAMES)
def test_missing_dataset_names_folder_files_and_flag(tmp_path, name):
    info = D.dataset_info(name)
    with pytest.raises(FileNotFoundError) as err:
        D.load(name, tmp_path)
    msg = str(err.value)
    assert str(tmp_path / info.tonic_class) in msg
    assert info.train_archive in msg and info.train_data in msg
    assert "download=True" in msg and "--download" in msg


def test_below_tonic_threshold_is_missing_unless_min_files_lowered(tmp_path):
    build("dvsgesture", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"at least 100 \.npy files, found 4") as err:
        D.load("dvsgesture", tmp_path)
    assert "min_files" in str(err.value)
    assert len(D.load("dvsgesture", tmp_path, min_files=4, n_time_bins=3)) == 4
    # The archive Tonic checks for is required too.
    (tmp_path / "DVSGesture" / "ibmGestureTrain.tar.gz").unlink()
    with pytest.raises(FileNotFoundError, match="ibmGestureTrain.tar.gz"):
        D.load("dvsgesture", tmp_path, min_files=1)


def test_download_only_on_opt_in(tmp_path, monkeypatch):
    calls = []

    def fake_download(self):  # stands in for Tonic's download + extract
        calls.append(type(self).__name__)
        write_nmnist(Path(self.location_on_system).parent, True, {2: 1, 5: 1}, seed=1)

    monkeypatch.setattr(tonic.dataset.Dataset, "download", fake_download)
    with pytest.raises(FileNotFoundError):
        D.load("nmnist", tmp_path, min_files=1)
    assert calls == []
    ds = D.load("nmnist", tmp_path, min_files=1, download=True, n_time_bins=3)
    assert calls == ["NMNIST"] and len(ds) == 2
    # Present now: download=True does not fetch again.
    D.load("nmnist", tmp_path, min_files=1, download=True)
    assert calls == ["NMNIST"]


def test_bad_arguments(tmp_path):
    build("shd", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        D.load("mnist", tmp_path)
    with pytest.raises(ValueError, match="n_time_bins"):
        _load("shd", tmp_path, n_time_bins=0)
    with pytest.raises(ValueError, match="downsample"):
        _load("shd", tmp_path, downsample=0)
    with pytest.raises(TypeError, match="train"):
        _load("shd", tmp_path, train="yes")
    with pytest.raises(TypeError, match="index"):
        _load("shd", tmp_path)[1.0]
    assert _load("shd", tmp_path).n_time_bins == D.dataset_info("shd").default_time_bins
