"""Hostile inputs: every user error is one line naming the flag or file, status 2, before any work.

Covers issue 11's categories: model values, devices and backends, sizes that cannot fit, paths, broken
and unsafe checkpoints (nothing in them runs), NaN targets, seeds, conflicting flags, resumes that would
rewrite history, litter of killed writes, NaN exponents in the flossing loss, and the dependency pins.
The sweep's own cases (config changes in an existing --out, orphaned workers) are in
test_sweep_reliability.py; the drop-in neurons' in test_dropin_validation.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from importlib import metadata

import pytest
import torch

from surroflos import floss, flossing_loss
from surroflos.checkpoint import CheckpointError, load_checkpoint
from surroflos import cli
from surroflos.models import RateRNN
from surroflos.train import ConfigError, TrainConfig, train

TINY = ["--N", "8", "--epochs", "2", "--steps-per-epoch", "1", "--batch", "4", "--eval-batch", "8",
        "--pre-steps", "1", "--floss-T", "16", "--floss-batch", "2", "--spectrum-T", "16", "--lyap-every", "0",
        "--k", "2", "--delay", "2", "--T", "12", "--no-progress"]


def _tiny_cfg(out, **kw) -> TrainConfig:
    values = dict(N=8, epochs=2, steps_per_epoch=1, batch=4, eval_batch=8, pre_steps=1, floss_T=16, floss_batch=2,
                  spectrum_T=16, lyap_every=0, k=2, delay=2, T=12, out=str(out))
    values.update(kw)
    return TrainConfig(**values)


def main(argv) -> int:
    """``surroflos argv`` in-process: its exit status, whether returned or raised by argparse."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def _one_error_line(capsys, command: str, *needles: str) -> str:
    """The captured stderr is exactly one line ``surroflos <command>: error: ...`` containing ``needles``."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"surroflos {command}: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished two-epoch run (seconds) to damage copies of."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    train(_tiny_cfg(out), progress=False, log=lambda s: None)
    return out


def _copy_run(trained_run, tmp_path, name="run"):
    dst = tmp_path / name
    shutil.copytree(trained_run, dst)
    return dst


# ------------------------------------------------------------------------------------------------
# Flag values: refused by the parser or the configuration, naming the flag, nothing created
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, flag", [
    (["--beta", "1.5"], "--beta"),
    (["--beta", "nan"], "--beta"),
    (["--threshold", "0"], "--threshold"),
    (["--threshold", "-1"], "--threshold"),
    (["--surrogate", "bogus"], "--surrogate"),
    (["--surrogate-scale", "0"], "--surrogate-scale"),
    (["--g", "nan"], "--g"),
    (["--model", "cuba", "--alpha", "nan"], "--alpha"),
    (["--device", "foo"], "--device"),
    (["--target", "nan"], "--target"),
    (["--seed", str(2**64)], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--lr", "inf"], "--lr"),
    (["--rate-dt", "nan"], "--rate-dt"),
    (["--delay", "3", "--task-param", "delay=50"], "--delay"),
    (["--backend", "triton"], "--backend"),
])
def test_train_flag_values(tmp_path, capsys, monkeypatch, argv, flag):
    if "triton" in argv:
        monkeypatch.setenv("TRITON_INTERPRET", "0")  # the tests' interpreter would make it legal on the CPU
        if torch.cuda.is_available():
            pytest.skip("triton is a valid backend where CUDA exists")
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), *argv]) == 2
    _one_error_line(capsys, "train", flag)
    assert not out.exists()  # refused before any work


@pytest.mark.parametrize("command, argv, flag", [
    ("lyapunov", ["--seed", "-1"], "--seed"),
    ("lyapunov", ["--beta", "nan", "--model", "spiking"], "--beta"),
    ("lyapunov", ["--surrogate-scale", "0"], "--surrogate-scale"),
    ("lyapunov", ["--device", "cuda:7"], "--device"),
    ("demo", ["--seed", str(2**70)], "--seed"),
    ("sweep", ["--success", "nan"], "--success"),
    ("sweep", ["--seeds", "0", "-3"], "--seeds"),
    ("sweep", ["--gains", "nan"], "--gains"),
    ("bench", ["--compile-backend", "bogus", "--quick"], "--compile-backend"),
    ("bench", ["--seed", "-1", "--quick"], "--seed"),
])
def test_other_commands_flag_values(tmp_path, capsys, command, argv, flag):
    out = tmp_path / "out"
    assert main([command, *argv, "--out", str(out)]) == 2
    _one_error_line(capsys, command, flag)
    assert not out.exists()


def test_python_api_keeps_typed_errors_with_the_same_message(tmp_path):
    with pytest.raises(ConfigError, match=r"^beta must lie in \[0, 1\]"):
        train(_tiny_cfg(tmp_path / "a", model="lif", beta=1.5), progress=False)
    with pytest.raises(ValueError, match="target must be a finite number"):
        train(_tiny_cfg(tmp_path / "b", target=float("nan")), progress=False)
    with pytest.raises(ValueError, match="device must be cpu, cuda, cuda:N or auto, got 'foo'"):
        train(_tiny_cfg(tmp_path / "c", device="foo"), progress=False)
    with pytest.raises(ValueError, match="delay is 3 but task_params sets delay=50"):
        train(_tiny_cfg(tmp_path / "d", delay=3, task_params={"delay": 50}), progress=False)
    with pytest.raises(ValueError, match=r"seed must be at most 2\*\*63 - 2"):
        train(_tiny_cfg(tmp_path / "e", seed=2**64), progress=False)
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_task_param_delay_is_reported_as_the_delay(tmp_path):
    out = tmp_path / "run"
    i = TINY.index("--delay")
    assert main(["train", *TINY[:i], *TINY[i + 2:], "--task-param", "delay=3", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["delay"] == 3 and "delay" not in cfg["task_params"]


# ------------------------------------------------------------------------------------------------
# Sizes that cannot fit: refused with the estimate, before allocating
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command, argv", [
    ("train", ["--N", "100000000", "--k", "2"]),
    ("lyapunov", ["--N", "10000000"]),
    ("sweep", ["--N", "100000000", "--k", "2", "--preset", "smoke", "--workers", "1", "--no-progress"]),
])
def test_sizes_that_cannot_fit(tmp_path, capsys, command, argv):
    out = tmp_path / "out"
    extra = TINY if command == "train" else []
    assert main([command, *extra, *argv, "--out", str(out)]) == 2
    line = _one_error_line(capsys, command, "N=", "available")
    assert re.search(r"needs at least [\d.]+ [PT]iB of memory but [\d.]+ [GMT]iB is available", line), line


# ------------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------------

def test_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["train", *TINY, "--out", str(f)]) == 2
    _one_error_line(capsys, "train", "--out", str(f), "is a file")
    assert main(["lyapunov", "--out", str(f)]) == 2
    _one_error_line(capsys, "lyapunov", "--out", "is a file")


def test_out_that_cannot_be_created(tmp_path, capsys):
    parent = tmp_path / "file"
    parent.write_text("x")
    assert main(["train", *TINY, "--out", str(parent / "sub")]) == 2
    _one_error_line(capsys, "train", "--out", "cannot create")


def test_out_not_writable(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    real_access = os.access
    if os.geteuid() == 0:  # root writes anywhere: let access() report what a user would see
        monkeypatch.setattr(os, "access", lambda p, m: False if os.fspath(p) == str(ro) else real_access(p, m))
    assert main(["train", *TINY, "--out", str(ro)]) == 2
    _one_error_line(capsys, "train", "--out", "not writable")


def test_run_file_that_is_a_folder(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "metrics.jsonl").mkdir(parents=True)
    assert main(["train", *TINY, "--out", str(out)]) == 2
    _one_error_line(capsys, "train", "metrics.jsonl", "is a folder")
    assert not (out / "checkpoint.pt").exists()


def test_export_out_that_is_a_folder(trained_run, tmp_path, capsys):
    folder = tmp_path / "dir"
    folder.mkdir()
    assert main(["export", str(trained_run), "--dt", "1e-3", "--out", str(folder)]) == 2
    _one_error_line(capsys, "export", "--out", "is a folder")
    assert os.listdir(folder) == []


# ------------------------------------------------------------------------------------------------
# Broken and unsafe checkpoints
# ------------------------------------------------------------------------------------------------

class _Payload:
    """Unpickling this runs ``touch <marker>`` (what an attacker's checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _damage(path, kind: str, marker):
    ck = load_checkpoint(path)
    raw = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "json":
        path.write_text(json.dumps({"model": {}}))
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "missing_keys":
        torch.save({k: v for k, v in ck.items() if k != "optimizer"}, path)
    elif kind == "wrong_shapes":
        torch.save({**ck, "model": {k: torch.zeros(3) for k in ck["model"]}}, path)
    elif kind == "nan_weights":
        torch.save({**ck, "model": {k: v * float("nan") for k, v in ck["model"].items()}}, path)
    elif kind == "payload":
        torch.save({**ck, "extra": _Payload(marker)}, path)
    elif kind == "payload_root":
        torch.save(_Payload(marker), path)
    else:  # pragma: no cover
        raise AssertionError(kind)


_DAMAGE = {
    "truncated": "not a readable checkpoint", "empty": "is empty", "random": "not a readable checkpoint",
    "json": "not a readable checkpoint", "tensor": "holds a Tensor", "missing_keys": "lacks ['optimizer']",
    "wrong_shapes": "has shape [3]", "nan_weights": "non-finite values in 'weight_rec'",
    "payload": "refusing to load", "payload_root": "refusing to load",
}


@pytest.mark.parametrize("kind", sorted(_DAMAGE))
def test_resume_from_a_broken_checkpoint(trained_run, tmp_path, capsys, kind):
    run = _copy_run(trained_run, tmp_path)
    marker = tmp_path / "PWNED"
    _damage(run / "checkpoint.pt", kind, marker)
    before = (run / "metrics.jsonl").read_text()
    assert main(["train", *TINY, "--epochs", "3", "--out", str(run), "--resume"]) == 2
    _one_error_line(capsys, "train", str(run / "checkpoint.pt"), _DAMAGE[kind])
    assert not marker.exists()  # nothing in the file ran
    assert (run / "metrics.jsonl").read_text() == before  # and nothing was written


@pytest.mark.parametrize("kind", ["payload", "payload_root", "truncated", "nan_weights", "wrong_shapes"])
def test_export_of_a_broken_checkpoint(trained_run, tmp_path, capsys, kind):
    run = _copy_run(trained_run, tmp_path)
    marker = tmp_path / "PWNED"
    _damage(run / "checkpoint.pt", kind, marker)
    assert main(["export", str(run), "--dt", "1e-3"]) == 2
    _one_error_line(capsys, "export", "checkpoint.pt", _DAMAGE[kind])
    assert not marker.exists()
    assert not (run / "model.nir").exists()


def test_dataset_cache_payload_does_not_run(tmp_path):
    """The event-dataset cache, the other torch file the package reads: a planted payload is not run, the
    recording is binned afresh and the file rewritten."""
    from _tonic_fixtures import write_shd  # tests/_tonic_fixtures.py

    from surroflos.tasks import datasets as D

    write_shd(tmp_path / "data", True, n=2, seed=0)
    ds = D.load("shd", tmp_path / "data", n_time_bins=5, cache_dir=tmp_path / "cache", min_files=1)
    frames, label = ds[0]
    cached = sorted(ds.cache_path.glob("*.pt"))[0]
    marker = tmp_path / "PWNED"
    torch.save({"format": 1, "x": _Payload(marker)}, cached)
    again = D.load("shd", tmp_path / "data", n_time_bins=5, cache_dir=tmp_path / "cache", min_files=1)
    frames2, label2 = again[0]
    assert not marker.exists()
    assert torch.equal(frames, frames2) and label == label2
    assert "x" not in torch.load(cached, weights_only=True)  # rewritten with the binned recording


def test_checkpoints_hold_only_plain_data(trained_run):
    ck = torch.load(trained_run / "checkpoint.pt", weights_only=True)  # no allow-listed globals needed
    assert type(ck["versions"]["torch"]) is str


# ------------------------------------------------------------------------------------------------
# Resumes that would rewrite history; litter of killed writes
# ------------------------------------------------------------------------------------------------

def test_resume_with_fewer_epochs_than_done_is_refused(trained_run, tmp_path, capsys):
    run = _copy_run(trained_run, tmp_path)
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run), "--resume"]) == 2
    _one_error_line(capsys, "train", "--epochs 1", "completed 2 epochs")
    assert json.loads((run / "config.json").read_text())["config"]["epochs"] == 2


def test_resume_with_more_epochs_continues(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    assert main(["train", *TINY, "--epochs", "3", "--out", str(run), "--resume"]) == 0
    result = json.loads((run / "result.json").read_text())
    assert result["final"]["epochs"] == 3 and result["config"]["epochs"] == 3


def test_resume_removes_temporaries_of_a_killed_write(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    litter = run / ".checkpoint.pt.k1ll3d.tmp"
    litter.write_bytes(b"half a checkpoint")
    assert main(["train", *TINY, "--epochs", "3", "--out", str(run), "--resume"]) == 0
    assert not litter.exists()
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]


# ------------------------------------------------------------------------------------------------
# Flossing with NaN targets or exponents
# ------------------------------------------------------------------------------------------------

def test_flossing_loss_refuses_nan_and_empty_exponents():
    with pytest.raises(ValueError, match="NaN or inf"):
        flossing_loss(torch.tensor([[0.1, float("nan")]]))
    with pytest.raises(ValueError, match="empty"):
        flossing_loss(torch.empty(4, 0))
    with pytest.raises(ValueError, match="target must be finite"):
        flossing_loss(torch.zeros(2, 3), target=float("nan"))
    # a finite input still gives the loss: sum over k of (lambda - target)^2, mean over trajectories
    lam = torch.tensor([[0.5, -1.0], [0.0, 2.0]], dtype=torch.float64)
    assert float(flossing_loss(lam, 0.5)) == pytest.approx(((0 + 2.25) + (0.25 + 2.25)) / 2, rel=1e-15)


def test_floss_names_a_nan_target_before_any_update():
    model = RateRNN(1, 6, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    before = model.weight_rec.detach().clone()
    with pytest.raises(ValueError, match="target must be finite"):
        floss(model, 3, k=2, T=16, batch=2, target=float("nan"), progress=False)
    assert torch.equal(model.weight_rec, before)


# ------------------------------------------------------------------------------------------------
# Dependencies
# ------------------------------------------------------------------------------------------------

def test_dependency_lower_bounds():
    """nir >= 1.0.6 (v_reset; sinabs pins nir <= 1.0.4 and would otherwise break export of our own files)."""
    reqs = {re.split(r"[<>=!~; \[]", r, maxsplit=1)[0].lower(): r for r in metadata.requires("surroflos") or []
            if "extra ==" not in r}
    assert re.search(r"nir\s*>=\s*1\.0\.6", reqs["nir"]), reqs["nir"]
    for name in ("torch", "snntorch", "norse", "tonic", "numpy", "matplotlib", "tqdm"):
        assert ">=" in reqs[name], (name, reqs[name])
    from packaging.version import Version

    assert Version(metadata.version("nir")) >= Version("1.0.6")
