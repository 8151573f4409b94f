"""surroflos sweep packs runs that differ only in their seeds into ensembles: the same tables, run
folders and resumption as running every run alone (float64: the same numbers to 1e-10)."""

from __future__ import annotations

import csv
import json
import os

import pytest

from surroflos import cli
from surroflos.sweep import SweepSpec, expand, pack_config, pack_runs, run_sweep
from surroflos.train import ConfigError, TrainConfig, train

BASE = {"N": 8, "epochs": 2, "steps_per_epoch": 2, "batch": 4, "k": 2, "pre_steps": 2, "floss_T": 12,
        "floss_batch": 2, "lyap_every": 1, "spectrum_T": 16, "eval_batch": 8, "T": 12, "dtype": "float64"}


def _spec(**kw) -> SweepSpec:
    values = dict(tasks=["xor"], delays=[2], models=["rate"], flossing=["none", "pre"], seeds=[0, 1, 2],
                  base=dict(BASE), success=0.5)
    values.update(kw)
    return SweepSpec(**values)


def _rows(out) -> dict:
    with open(os.path.join(out, "runs.csv")) as f:
        return {(r["flossing"], r["seed"]): r for r in csv.DictReader(f)}


NUMBERS = ("value", "val_loss", "lambda1_before", "lambda1_preflossed", "lambda1_after", "loss_auc")


def _same_numbers(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        for col in NUMBERS:
            x, y = float(a[key][col]), float(b[key][col])
            assert (x != x and y != y) or abs(x - y) <= 1e-10 * max(1.0, abs(y)), (key, col, x, y)


def test_pack_runs_groups_consecutive_seeds_of_one_cell(tmp_path):
    cfgs = expand(_spec(seeds=[0, 1, 2, 5, 6]), str(tmp_path))
    packs = pack_runs(cfgs)
    assert sorted([c.flossing, [m.seed for m in p]] for p in packs for c in p[:1]) == [
        ["none", [0, 1, 2]], ["none", [5, 6]], ["pre", [0, 1, 2]], ["pre", [5, 6]]]
    assert sorted(len(p) for p in pack_runs(cfgs, 2)) == [1, 1, 2, 2, 2, 2]
    assert all(len(p) == 1 for p in pack_runs(cfgs, 1))
    ens = pack_config(packs[0], str(tmp_path))
    assert ens.ensemble == 3 and ens.seed == packs[0][0].seed and "packs" in ens.out
    with pytest.raises(ConfigError, match="ensemble must be 'auto' or a positive int"):
        pack_runs(cfgs, 0)


def test_packed_sweep_equals_solo_runs(tmp_path):
    spec = _spec(seeds=[0, 1])
    solo = run_sweep(spec, str(tmp_path / "solo"), progress=False, ensemble=1)
    packed = run_sweep(spec, str(tmp_path / "packed"), progress=False)
    assert [r["status"] for r in solo] == [r["status"] for r in packed] == ["ran"] * 4
    _same_numbers(_rows(tmp_path / "packed"), _rows(tmp_path / "solo"))
    assert sorted(os.listdir(tmp_path / "packed" / "packs")) and not (tmp_path / "solo" / "packs").exists()
    for name in os.listdir(tmp_path / "solo" / "runs"):
        a = [json.loads(x) for x in (tmp_path / "solo" / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        b = [json.loads(x) for x in (tmp_path / "packed" / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
        for ra, rb in zip(a, b):
            assert abs(ra["val_loss"] - rb["val_loss"]) <= 1e-10 * abs(ra["val_loss"])
    # Rerun: everything is done and reloaded, nothing trains again
    again = run_sweep(spec, str(tmp_path / "packed"), progress=False)
    assert [r["status"] for r in again] == ["done"] * 4
    assert (tmp_path / "packed" / "results.md").read_text().splitlines()[-4:] == \
        (tmp_path / "solo" / "results.md").read_text().splitlines()[-4:]


def test_an_interrupted_pack_resumes(tmp_path):
    spec = _spec(flossing=["pre"])
    cfgs = expand(spec, str(tmp_path / "sw"))
    (pack,) = pack_runs(cfgs)
    ens = pack_config(pack, str(tmp_path / "sw"))
    res = train(ens, progress=False, log=lambda s: None, stop_after=1)  # a kill after epoch 1
    assert res.interrupted
    rows = run_sweep(spec, str(tmp_path / "sw"), progress=False)
    assert [r["status"] for r in rows] == ["resumed"] * 3
    reference = run_sweep(spec, str(tmp_path / "ref"), progress=False, ensemble=1)
    _same_numbers(_rows(tmp_path / "sw"), _rows(tmp_path / "ref"))
    assert [r["status"] for r in reference] == ["ran"] * 3


def test_a_stopped_member_is_a_failed_run(tmp_path, monkeypatch):
    from surroflos import train as tr

    real = tr._losses

    def nan_for_member_2(task, out, y, m, members):
        loss = real(task, out, y, m, members)
        if members is not None and task is not None:
            loss = loss.clone()
            loss[2] = float("nan")
        return loss

    monkeypatch.setattr(tr, "_losses", nan_for_member_2)
    rows = run_sweep(_spec(flossing=["none"]), str(tmp_path / "sw"), progress=False)
    status = {r["seed"]: r["status"] for r in rows}
    assert status == {0: "ran", 1: "ran", 2: "error"}
    bad = next(r for r in rows if r["seed"] == 2)
    assert "training loss became nan at epoch 1" in bad["error"]


def test_cli_ensemble_flag(tmp_path, capsys):
    args = ["sweep", "--preset", "smoke", "--delays", "2", "--flossing", "none", "--seeds", "0", "1",
            "--workers", "1", "--no-progress", "--out", str(tmp_path / "sw")]
    assert cli.main(args + ["--ensemble", "2"]) == 0
    assert len(os.listdir(tmp_path / "sw" / "packs")) == 1
    with pytest.raises(SystemExit):
        cli.main(args + ["--ensemble", "many"])
    assert "--ensemble" in capsys.readouterr().err


def test_pack_memory_is_checked_before_anything_runs(tmp_path, monkeypatch):
    from surroflos import memory
    from surroflos.errors import UsageError
    from surroflos.train import validate

    spec = _spec(flossing=["none"])
    one = expand(spec, str(tmp_path / "x"))[0]
    single = memory.train_bytes(one, validate(one))
    monkeypatch.setattr(memory, "available_bytes", lambda device: int(1.5 * single))  # one run fits, not three
    with pytest.raises(UsageError, match=r"needs at least .* available"):
        run_sweep(spec, str(tmp_path / "sw"), progress=False)
    assert not (tmp_path / "sw").exists()
    rows = run_sweep(spec, str(tmp_path / "solo"), progress=False, ensemble=1)  # alone, each fits
    assert [r["status"] for r in rows] == ["ran"] * 3
