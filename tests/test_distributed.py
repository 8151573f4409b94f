"""``surroflos train --distributed`` under torchrun: P processes train what one process trains on the same
global batch (float64, to 1e-10 relative; docs/TESTING.md), rank 0 writes the run folder, ``--resume``
continues, and what a data-parallel run cannot do is refused in one line.

The batches are split unevenly over the two processes (5 = 2 + 3, flossing 3 = 1 + 2, validation 7 = 3 + 4), so
an average of per-process means (DistributedDataParallel's default) would not pass: the loss and the flossing
loss must be means over the global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from surroflos import cli
from surroflos.distributed import check_config
from surroflos.errors import UsageError
from surroflos.train import TrainConfig, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL = 1e-10  # float64 exactness: the runs differ only in how the batch is split over matrix products

# What one test run computes: --flag value pairs shared by the CLI (torchrun) and TrainConfig.
SMALL = {"N": 8, "T": 20, "delay": 2, "steps_per_epoch": 2, "batch": 5, "k": 2, "pre_steps": 2, "floss_T": 16,
         "floss_batch": 3, "lyap_every": 1, "spectrum_T": 16, "eval_batch": 7, "dtype": "float64"}


def _flags(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out += [flag] if v else []
        else:
            out += [flag, str(v)]
    return out


def _torchrun(values: dict, out, *extra: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "surroflos", "train", "--distributed", *_flags(values), "--out", str(out), "--no-progress", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _numbers(x, path=""):
    """``(path, value)`` of every number in a JSON value, timings left out."""
    if isinstance(x, dict):
        for k, v in x.items():
            if k != "seconds":
                yield from _numbers(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _numbers(v, f"{path}[{i}]")
    else:
        yield path, x


def _assert_same_run(one: str, two: str) -> None:
    """The run folders ``one`` (one process) and ``two`` (two processes) hold the same results."""
    def read(folder):
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        with open(os.path.join(folder, "result.json")) as f:
            res = json.load(f)
        return {"metrics": rows, **{k: res[k] for k in ("final", "spectrum_before", "spectrum_after",
                                                          "preflossing", "lambda1_start")}}

    a, b = dict(_numbers(read(one))), dict(_numbers(read(two)))
    assert a.keys() == b.keys()
    for key, x in a.items():
        y = b[key]
        if isinstance(x, float) and isinstance(y, float):
            assert abs(x - y) <= RTOL * abs(x), (key, x, y)
        else:
            assert x == y, (key, x, y)
    wa = torch.load(os.path.join(one, "checkpoint.pt"), weights_only=False)["model"]
    wb = torch.load(os.path.join(two, "checkpoint.pt"), weights_only=False)["model"]
    for name, t in wa.items():
        torch.testing.assert_close(wb[name], t, rtol=RTOL, atol=RTOL * float(t.abs().max()), msg=name)


def test_two_processes_train_what_one_does_and_resume(tmp_path):
    """Rate network, preflossing and flossing bouts during training: two processes, stopped after 2 epochs and
    resumed for a third, against one uninterrupted process."""
    values = dict(SMALL, model="rate", flossing="during", floss_every=1, floss_steps=2)
    one = TrainConfig(**dict(values, epochs=3, out=str(tmp_path / "one")))
    train(one, progress=False, log=lambda s: None)
    two = tmp_path / "two"
    _torchrun(dict(values, epochs=2), two)
    with open(two / "config.json") as f:
        assert json.load(f)["parallel"] == {"processes": 2, "backend": "gloo"}
    _torchrun(dict(values, epochs=3), two, "--resume")
    _assert_same_run(one.out, str(two))
    with open(two / "metrics.jsonl") as f:
        assert len(f.readlines()) == 3  # rank 0 alone writes


def test_two_processes_train_a_spiking_network_as_one_does(tmp_path):
    """Recurrent LIF (surrogate gradients through spikes) with local preflossing."""
    values = dict(SMALL, model="lif", flossing="pre", local_flossing=True, epochs=2)
    one = TrainConfig(**dict(values, out=str(tmp_path / "one")))
    train(one, progress=False, log=lambda s: None)
    _torchrun(values, tmp_path / "two")
    _assert_same_run(one.out, str(tmp_path / "two"))


@pytest.mark.parametrize("argv, message", [
    ([], "runs under torchrun"),
    (["--ensemble", "2"], "--distributed with --ensemble is not supported"),
    (["--rule", "eprop", "--model", "rate"], "--rule bptt only"),
])
def test_what_cannot_run_distributed_is_one_line(tmp_path, capsys, monkeypatch, argv, message):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    code = cli.main(["train", "--distributed", "--out", str(tmp_path / "r"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "r").exists()


def test_batches_smaller_than_the_process_count_are_refused():
    with pytest.raises(UsageError, match="--floss-batch 3 is smaller than the 4 processes"):
        check_config(TrainConfig(batch=8, eval_batch=8, floss_batch=3), 4)
    check_config(TrainConfig(batch=8, eval_batch=8, floss_batch=3, flossing="none"), 4)  # no flossing: fine
