"""`surroflos train --threads`: one torch thread for small networks by default (where a second thread costs more
than it gains: `make train` took 87 s on 2 threads and 45 s on one), the given count otherwise, and the
caller's thread count restored afterwards."""

import pytest
import torch

from surroflos import cli
from surroflos._threads import SMALL_STATE, train_threads
from surroflos.train import TrainConfig

TINY = ["--model", "lif", "--N", "8", "--epochs", "1", "--steps-per-epoch", "1", "--batch", "4", "--k", "1",
        "--pre-steps", "1", "--floss-T", "8", "--floss-batch", "2", "--spectrum-T", "8", "--eval-batch", "8",
        "--no-progress"]


def test_auto_picks_one_thread_for_small_networks_only():
    small = TrainConfig(N=64, batch=32)
    assert train_threads(small, "auto") == 1
    assert train_threads(TrainConfig(N=64, batch=32, ensemble=8), "auto") == 1  # 16384 elements: make train
    assert train_threads(small, "auto", compare=True) == 1  # 8 members by default
    big = TrainConfig(N=512, batch=256)
    assert train_threads(big, "auto") is None  # torch's default
    edge = SMALL_STATE // (4 * 64)
    assert train_threads(TrainConfig(N=64, batch=edge, ensemble=4), "auto") == 1
    assert train_threads(TrainConfig(N=64, batch=edge + 1, ensemble=4), "auto") is None
    assert train_threads(TrainConfig(N=64, batch=32, device="cuda"), "auto") is None
    assert train_threads(big, 3) == 3 and train_threads(small, 2) == 2


@pytest.mark.parametrize("flag, want", [([], 1), (["--threads", "2"], 2)])
def test_train_runs_with_the_chosen_threads_and_restores_them(tmp_path, monkeypatch, flag, want):
    seen = []
    from surroflos import train as train_module

    real = train_module.train

    def spy(cfg, **kw):
        seen.append(torch.get_num_threads())
        return real(cfg, **kw)

    monkeypatch.setattr(train_module, "train", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert cli.main(["train", *TINY, "--out", str(tmp_path / "r"), *flag]) == 0
        assert seen == [want]
        assert torch.get_num_threads() == 3  # restored
    finally:
        torch.set_num_threads(before)


def test_bad_thread_count_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--threads", "many"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("surroflos train: error: argument --threads")


@pytest.mark.parametrize("argv, want", [([], 1), (["--threads", "2"], 2)])
def test_study_runs_small_cells_on_one_thread(tmp_path, monkeypatch, argv, want):
    """python -m surroflos.study: one thread when every cell is small (the tiny preset), the given count otherwise;
    the caller's count is restored."""
    from surroflos import study

    seen = []
    monkeypatch.setattr(study, "run_study", lambda *a, **k: seen.append(torch.get_num_threads()) or [])
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert study.main(["--preset", "tiny", "--out", str(tmp_path / "s"), *argv]) == 0
        assert seen == [want] and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_study_with_a_large_cell_keeps_torchs_threads(tmp_path, monkeypatch):
    from surroflos import study

    seen = []
    monkeypatch.setattr(study, "run_study", lambda *a, **k: seen.append(torch.get_num_threads()) or [])
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert study.main(["--preset", "screen4", "--out", str(tmp_path / "s")]) == 0  # N = 512: 163840 elements
        assert seen == [3]
    finally:
        torch.set_num_threads(before)


def test_torch_threads_sets_and_restores_even_on_error():
    from surroflos._threads import torch_threads

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3
        with torch_threads(None):  # None: as they are
            assert torch.get_num_threads() == 3
        with pytest.raises(RuntimeError):
            with torch_threads(2):
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
