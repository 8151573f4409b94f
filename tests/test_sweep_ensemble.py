"""surroflos sweep packs runs that differ only in their seeds into ensembles: the same tables, run
folders and resumption as running every run alone (float64: the same numbers to 1e-10)."""

from __future__ import annotations

import csv
import json
import os

import pytest

from surroflos import cli
from surroflos.sweep import SweepSpec, config_hash, expand, pack_config, pack_runs, run_definition, run_sweep
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


def test_pack_runs_groups_runs_of_one_shape(tmp_path):
    cfgs = expand(_spec(seeds=[0, 1, 2, 5, 6]), str(tmp_path))
    packs = pack_runs(cfgs)  # seeds and flossing modes are member-wise: one pack, in grid order
    assert [[(c.flossing, c.seed) for c in p] for p in packs] == [[(fl, s) for fl in ("none", "pre")
                                                                  for s in (0, 1, 2, 5, 6)]]
    assert [len(p) for p in pack_runs(cfgs, 4)] == [4, 4, 2]
    assert all(len(p) == 1 for p in pack_runs(cfgs, 1))
    ens = pack_config(packs[0], str(tmp_path))
    assert ens.ensemble == 10 and ens.seed == 0 and "packs" in ens.out
    assert [m["seed"] for m in ens.members] == [0, 1, 2, 5, 6] * 2
    assert [m["flossing"] for m in ens.members] == ["none"] * 5 + ["pre"] * 5
    # Consecutive seeds only: the plain ensemble (members None), hashed as before member-wise settings
    (seeds_only,) = pack_runs(expand(_spec(flossing=["pre"]), str(tmp_path)))
    plain = pack_config(seeds_only, str(tmp_path))
    assert plain.members is None and "members" not in run_definition(plain)
    with pytest.raises(ConfigError, match="ensemble must be 'auto' or a positive int"):
        pack_runs(cfgs, 0)


def test_runs_of_other_shapes_or_settings_are_never_packed(tmp_path):
    cfgs = []
    for kw in (dict(), dict(base=dict(BASE, N=9)), dict(models=["lif"]), dict(tasks=["copy"]),
               dict(delays=[3]), dict(rules=["eprop"]), dict(base=dict(BASE, floss_T=13))):
        cfgs += expand(_spec(**kw), str(tmp_path / str(len(cfgs))))
    packs = pack_runs(cfgs)
    assert len(packs) == 7 and all(len(p) == 6 for p in packs)
    for p in packs:
        shared = {(c.N, c.model, c.task, c.delay, c.rule, c.floss_T) for c in p}
        assert len(shared) == 1


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


# A grid that packs beyond the seed: gains x flossing modes x (non-consecutive) seeds of a LIF network.
MIXED = dict(models=["lif"], flossing=["none", "pre", "during"], gains=[0.8, 1.6], seeds=[0, 2],
             base=dict(BASE, floss_every=1, floss_steps=1, floss_times=1))


def _folder(run: str) -> tuple[list, dict]:
    rows = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl")).read().splitlines()]
    return rows, json.loads(open(os.path.join(run, "result.json")).read())


def _assert_same_numbers(a, b, where) -> None:
    """Equal JSON values, numbers to 1e-10 relative (``seconds`` and the pack's records aside: which pack and
    member, and ``stopped``, None for a member that was not stopped)."""
    if isinstance(b, dict):
        assert a.get("stopped") is None
        assert set(a) - {"ensemble", "stopped"} == set(b) - {"ensemble", "stopped"}, where
        for k in b:
            if k not in ("seconds", "ensemble", "versions", "out", "stopped"):
                _assert_same_numbers(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_numbers(x, y, f"{where}[{i}]")
    elif isinstance(b, float) and not isinstance(a, bool):
        assert abs(a - b) <= 1e-10 * max(1.0, abs(b)), (where, a, b)
    else:
        assert a == b, (where, a, b)


def assert_packed_runs_equal_solo(tmp_path, n_runs: int) -> list:
    """The run folders of the sweep in ``tmp_path/packed`` hold the numbers (metrics, results: the float64 policy
    of _assert_same_numbers) and the definitions (run.json, hash included) of those in ``tmp_path/solo``."""
    names = sorted(os.listdir(tmp_path / "solo" / "runs"))
    assert names == sorted(os.listdir(tmp_path / "packed" / "runs")) and len(names) == n_runs
    for name in names:
        a, b = tmp_path / "packed" / "runs" / name, tmp_path / "solo" / "runs" / name
        (rows_a, res_a), (rows_b, res_b) = _folder(a), _folder(b)
        _assert_same_numbers(rows_a, rows_b, name + "/metrics.jsonl")
        _assert_same_numbers(res_a, res_b, name + "/result.json")
        assert json.loads((a / "run.json").read_text()) == json.loads((b / "run.json").read_text())
    return names


def test_a_packed_mixed_grid_equals_its_solo_runs(tmp_path):
    spec = _spec(**MIXED)
    solo = run_sweep(spec, str(tmp_path / "solo"), progress=False, ensemble=1)
    packed = run_sweep(spec, str(tmp_path / "packed"), progress=False)
    assert [r["status"] for r in solo] == [r["status"] for r in packed] == ["ran"] * 12
    assert len(os.listdir(tmp_path / "packed" / "packs")) == 1  # one ensemble of 12 members
    names = assert_packed_runs_equal_solo(tmp_path, 12)
    with open(tmp_path / "packed" / "runs.csv") as f, open(tmp_path / "solo" / "runs.csv") as g:
        pa, so = ({r["out"].split("/runs/")[1]: r for r in csv.DictReader(h)} for h in (f, g))
    for name in names:
        for col in NUMBERS:
            x, y = float(pa[name][col]), float(so[name][col])
            assert (x != x and y != y) or abs(x - y) <= 1e-10 * max(1.0, abs(y)), (name, col, x, y)
    assert (tmp_path / "packed" / "results.md").read_text().splitlines()[-6:] == \
        (tmp_path / "solo" / "results.md").read_text().splitlines()[-6:]
    again = run_sweep(spec, str(tmp_path / "packed"), progress=False)
    assert [r["status"] for r in again] == ["done"] * 12


def test_an_interrupted_mixed_pack_resumes(tmp_path):
    spec = _spec(**dict(MIXED, flossing=["none", "during"], base=dict(MIXED["base"], epochs=3)))
    (pack,) = pack_runs(expand(spec, str(tmp_path / "sw")))
    ens = pack_config(pack, str(tmp_path / "sw"))
    assert ens.members is not None and train(ens, progress=False, log=lambda s: None, stop_after=2).interrupted
    rows = run_sweep(spec, str(tmp_path / "sw"), progress=False)
    assert [r["status"] for r in rows] == ["resumed"] * 8
    run_sweep(spec, str(tmp_path / "ref"), progress=False, ensemble=1)
    for name in os.listdir(tmp_path / "ref" / "runs"):
        (ra, sa), (rb, sb) = _folder(tmp_path / "sw" / "runs" / name), _folder(tmp_path / "ref" / "runs" / name)
        _assert_same_numbers(ra, rb, name)
        _assert_same_numbers(sa, sb, name)
        assert config_hash(TrainConfig.from_dict(sa["config"])) == config_hash(TrainConfig.from_dict(sb["config"]))


def test_an_interrupted_pack_of_another_packing_resumes_as_it_was_packed(tmp_path):
    """A pack of the seeds of one cell (as an earlier version packed, or another --ensemble) resumes as is;
    the grid's other runs are packed around it."""
    spec = _spec(flossing=["none", "pre"])
    cfgs = expand(spec, str(tmp_path / "sw"))
    old = pack_config([c for c in cfgs if c.flossing == "pre"], str(tmp_path / "sw"))
    assert old.members is None and train(old, progress=False, log=lambda s: None, stop_after=1).interrupted
    rows = run_sweep(spec, str(tmp_path / "sw"), progress=False)
    assert sorted((r["flossing"], r["status"]) for r in rows) == [("none", "ran")] * 3 + [("pre", "resumed")] * 3
    assert len(os.listdir(tmp_path / "sw" / "packs")) == 2  # the old pack, and one of the none runs
    run_sweep(spec, str(tmp_path / "ref"), progress=False, ensemble=1)
    _same_numbers(_rows(tmp_path / "sw"), _rows(tmp_path / "ref"))
