"""surroflos.sweep's member-wise grid axes lrs x betas x targets: expansion, names, validation, tables, CLI,
and packing (runs differing in them train as one ensemble with the results of their solo runs)."""

import csv
import itertools
import json
import os

import pytest

from surroflos import cli
from surroflos.sweep import PRESETS, SweepSpec, expand, pack_config, pack_runs, run_sweep, spec_from_args, summarize
from surroflos.train import ConfigError, TrainConfig

# The tiny base of the gain / rule / local axes' tests, and the packing tests' float64 base and comparisons
# (1e-10 relative): one policy for every sweep packing test.
from test_sweep_axes import TINY
from test_sweep_ensemble import BASE, NUMBERS, _folder, assert_packed_runs_equal_solo


def _names(cfgs) -> dict:
    return {os.path.basename(c.out): c for c in cfgs}


def test_hparam_axes_expand_to_every_combination(tmp_path):
    spec = SweepSpec(tasks=["xor"], delays=[2], models=["lif"], flossing=["none", "pre"], seeds=[0, 1],
                     lrs=[1e-3, 0.03], betas=[None, 0.9], targets=[-0.01, 0.5], base=dict(TINY))
    cfgs = expand(spec, str(tmp_path))
    got = _names(cfgs)
    assert len(got) == len(cfgs)
    want = {}
    for fl, lr, beta, target, seed in itertools.product(["none", "pre"], ["0.001", "0.03"], [None, "0.9"],
                                                        ["-0.01", "0.5"], [0, 1]):
        if fl == "none":
            target = None  # a run without flossing ignores the target: run once, with the base's
        name = (f"xor-d2-lif-{fl}-lr{lr}" + ("" if beta is None else f"-b{beta}")
                + ("" if target is None else f"-t{target}") + f"-s{seed}")
        want[name] = (float(lr), 0.7 if beta is None else float(beta), 0.0 if target is None else float(target))
    assert set(got) == set(want) and len(want) == (2 * 2 * 2 + 2 * 2 * 2 * 2)
    for name, cfg in got.items():
        assert (cfg.lr, cfg.beta, cfg.target) == want[name], name
        assert cfg.N == 8 and cfg.g == TrainConfig().g and cfg.out == os.path.join(str(tmp_path), "runs", name)


def test_hparam_names_are_unambiguous_and_filesystem_safe(tmp_path):
    spec = SweepSpec(tasks=["xor"], delays=[2], flossing=["pre"], base=dict(TINY),
                     lrs=[0.0012345671, 0.0012345672, 1e-5, 2.5e20])
    got = _names(expand(spec, str(tmp_path)))
    assert len(got) == 4  # values equal to 6 digits still get their own folders
    for name, cfg in got.items():
        text = name.split("-lr")[1].rsplit("-s", 1)[0]
        assert float(text) == cfg.lr and set(text) <= set("0123456789.-+e"), name
    assert "xor-d2-rate-pre-lr1e-05-s0" in got


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_grids_without_the_new_axes_keep_their_names(tmp_path, preset):
    spec = PRESETS[preset]
    cfgs = expand(spec, str(tmp_path))
    for cfg in cfgs:
        # The name the sweep gave before these axes existed.
        want = (f"{cfg.task}-d{cfg.delay}-{cfg.model}-{cfg.flossing}"
                + (f"-g{cfg.g:g}" if spec.gains != [None] else "") + ("" if cfg.rule == "bptt" else f"-{cfg.rule}")
                + ("-local" if cfg.local_flossing else "") + f"-s{cfg.seed}")
        assert os.path.basename(cfg.out) == want
        assert (cfg.lr, cfg.beta, cfg.target) == tuple(spec.base.get(f, getattr(TrainConfig(), f))
                                                       for f in ("lr", "beta", "target"))


def test_tables_show_new_axes_only_where_used(tmp_path):
    """Columns lr / beta / target appear for an axis the sweep sets or that differs between runs; a grid
    without them keeps its tables (no such columns, no learning-speed column)."""
    run = tmp_path / "run"  # one learning curve for every row (the plots read it)
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"accuracy": 0.5, "val_loss": 0.7}\n{"accuracy": 0.6, "val_loss": 0.6}\n')

    def row(fl, seed, **kw):
        return dict({"task": "xor", "delay": 2, "model": "rate", "flossing": fl, "seed": seed, "g": 1.0,
                     "rule": "bptt", "local": False, "lr": 0.01, "beta": 0.7, "target": 0.0}, **kw,
                    status="ran", metric="accuracy", value=0.5 + seed / 10, higher_is_better=True, val_loss=0.7,
                    lambda1_before=-0.1, lambda1_preflossed=-0.2, lambda1_after=-0.3, loss_auc=0.8, out=str(run))

    def header(out, name) -> list:
        with open(out / name) as f:
            return next(csv.reader(f))

    plain = [row(fl, s) for fl in ("none", "pre") for s in (0, 1)]
    out = tmp_path / "plain"
    out.mkdir()
    summarize(plain, str(out))
    assert not {"lr", "beta", "target"} & (set(header(out, "runs.csv")) | set(header(out, "results.csv")))
    md = (out / "results.md").read_text()
    assert "| task | model | flossing | delay | metric | mean ± std | test loss | n |" in md

    varied = [row(fl, s, lr=lr, target=0.0 if fl == "none" else -0.5) for fl in ("none", "pre") for s in (0, 1)
              for lr in (1e-3, 1e-2)]
    out = tmp_path / "varied"
    out.mkdir()
    table = summarize(varied, str(out), axes=["target"])
    assert len(table) == 4  # one cell per flossing mode x lr, not merged over lr
    assert header(out, "results.csv")[:9] == ["task", "model", "flossing", "delay", "g", "rule", "local", "lr",
                                              "target"]
    assert "beta" not in header(out, "runs.csv") and {"lr", "target"} <= set(header(out, "runs.csv"))
    md = (out / "results.md").read_text()
    assert "| task | model | flossing | delay | lr | target | metric | mean ± std | test loss | test loss, mean " \
           "over epochs | n |" in md
    assert "| xor | rate | none | 2 | 0.001 | – | accuracy | 0.550 ± 0.071 |" in md  # no target without flossing
    assert "| xor | rate | pre | 2 | 0.01 | -0.5 | accuracy |" in md
    assert (out / "curves_xor_rate.png").stat().st_size > 0 and (out / "plot_xor_rate.png").stat().st_size > 0

    with_gains = [row("pre", s, g=g, beta=beta) for s in (0, 1) for g in (0.5, 1.5) for beta in (0.7, 0.9)]
    out = tmp_path / "gains"
    out.mkdir()
    assert len(summarize(with_gains, str(out))) == 4  # beta differs between runs: a column without axes=
    assert "| task | model | flossing | delay | g | rule | local | beta | metric |" in (out / "results.md").read_text()
    assert (out / "gain_xor_rate.png").stat().st_size > 0 and (out / "gain_curves_xor_rate.png").stat().st_size > 0


def test_hparam_axis_errors_are_one_line_and_name_the_field(tmp_path):
    def bad(**kw):
        with pytest.raises(ConfigError) as e:
            expand(SweepSpec(**{"tasks": ["xor"], "delays": [2], "base": dict(TINY), **kw}), str(tmp_path))
        assert "\n" not in str(e.value)
        return str(e.value)

    for v in (0, -1e-3, float("nan"), float("inf"), True, "0.1"):
        assert bad(lrs=[v]).startswith("lrs must be"), v
    for v in (-0.1, 1.5, float("nan"), "0.5"):
        assert bad(betas=[v]).startswith("betas must"), v
    for v in (float("inf"), float("nan"), "0", False):
        assert bad(targets=[v]).startswith("targets must be"), v
    for axis in ("lrs", "betas", "targets"):
        assert bad(**{axis: []}) == f"the sweep has no {axis}"
    msg = bad(base=dict(TINY, lr=1e-2), lrs=[1e-3])
    assert msg.startswith("lr is set both in the sweep's base and by its lrs axis")
    assert bad(base=dict(TINY, beta=0.8), betas=[None, 0.9]).startswith("beta is set both")
    assert bad(base=dict(TINY, target=-0.1), targets=[0.5]).startswith("target is set both")
    assert "share the folder" in bad(lrs=[1e-3, 0.001])
    # The base's value with the axis at its default (None) is no conflict.
    assert len(expand(SweepSpec(tasks=["xor"], delays=[2], base=dict(TINY, lr=1e-2, beta=0.8, target=-0.1)),
                      str(tmp_path))) == 2


def test_cli_hparam_flags_build_the_spec(tmp_path, capsys):
    parse = cli.build_parser().parse_args
    spec = spec_from_args(parse(["sweep", "--preset", "xor", "--lrs", "1e-3", "3e-3", "--betas", "0.9",
                                 "--targets", "-0.01", "0.5"]))
    assert spec.lrs == [1e-3, 3e-3] and spec.betas == [0.9] and spec.targets == [-0.01, 0.5]
    assert "lr" not in spec.base and spec.base["N"] == PRESETS["xor"].base["N"]  # the axis replaces the preset's lr
    assert PRESETS["xor"].base["lr"] == 3e-3  # the preset itself is untouched
    plain = spec_from_args(parse(["sweep", "--preset", "xor"]))
    assert (plain.lrs, plain.betas, plain.targets) == ([None], [None], [None]) and plain.base["lr"] == 3e-3
    for flag, value in (("--lrs", "0"), ("--lrs", "nan"), ("--betas", "1.5"), ("--targets", "inf")):
        with pytest.raises(SystemExit):
            parse(["sweep", flag, value])
        assert flag in capsys.readouterr().err
    # --lr and --lrs: one line naming the conflict, before anything runs
    assert cli.main(["sweep", "--preset", "smoke", "--lr", "1e-2", "--lrs", "1e-3", "--no-progress",
                     "--out", str(tmp_path / "sw")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lr is set both in the sweep's base and by its lrs axis" in err
    assert not (tmp_path / "sw").exists()


def test_cli_sweep_with_lrs_and_targets(tmp_path, capsys):
    out = tmp_path / "sw"
    argv = ["sweep", "--preset", "smoke", "--delays", "2", "--flossing", "none", "pre", "--lrs", "0.001", "0.01",
            "--targets", "-0.5", "--N", "8", "--batch", "4", "--workers", "1", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert sorted(os.listdir(out / "runs")) == ["xor-d2-rate-none-lr0.001-s0", "xor-d2-rate-none-lr0.01-s0",
                                                "xor-d2-rate-pre-lr0.001-t-0.5-s0", "xor-d2-rate-pre-lr0.01-t-0.5-s0"]
    for name in os.listdir(out / "runs"):
        res = json.loads((out / "runs" / name / "result.json").read_text())
        assert res["config"]["lr"] == float(name.split("-lr")[1].split("-")[0])
        assert res["config"]["target"] == (-0.5 if "-pre-" in name else 0.0)
    assert len(os.listdir(out / "packs")) == 1  # all four in one ensemble
    md = (out / "results.md").read_text()
    assert "| task | model | flossing | delay | lr | target | metric |" in md
    assert "| xor | rate | none | 2 | 0.001 | – | accuracy |" in md and "| xor | rate | pre | 2 | 0.01 | -0.5 |" in md
    with open(out / "results.csv") as f:
        cells = list(csv.DictReader(f))
    assert sorted((c["flossing"], float(c["lr"])) for c in cells) == [("none", 0.001), ("none", 0.01),
                                                                      ("pre", 0.001), ("pre", 0.01)]
    assert cli.main(argv) == 0  # finished runs are found again under the same names
    capsys.readouterr()
    assert (out / "results.md").read_text() == md


def test_packed_lr_beta_target_grid_equals_its_solo_runs(tmp_path):
    """Runs that differ in lr, beta and target (and flossing mode) pack into one ensemble whose members'
    run folders hold what their solo runs write (float64, 1e-10 relative: tests/test_sweep_ensemble.py)."""
    spec = SweepSpec(tasks=["xor"], delays=[2], models=["lif"], flossing=["none", "pre"], seeds=[0],
                     lrs=[1e-3, 2e-2], betas=[None, 0.9], targets=[-0.5], base=dict(BASE))
    (pack,) = pack_runs(expand(spec, str(tmp_path / "packed")))
    members = pack_config(pack, str(tmp_path / "packed")).members
    assert len(members) == 8 and {(m["lr"], m["beta"], m["target"]) for m in members} == \
        {(lr, b, t) for lr in (1e-3, 2e-2) for b in (0.7, 0.9) for t in (0.0, -0.5)}
    solo = run_sweep(spec, str(tmp_path / "solo"), progress=False, ensemble=1)
    packed = run_sweep(spec, str(tmp_path / "packed"), progress=False, ensemble="auto")
    assert [r["status"] for r in solo] == [r["status"] for r in packed] == ["ran"] * 8
    assert len(os.listdir(tmp_path / "packed" / "packs")) == 1 and not (tmp_path / "solo" / "packs").exists()
    names = assert_packed_runs_equal_solo(tmp_path, 8)
    # The lrs differ enough that the runs differ: a pack that gave every member one lr would fail above.
    finals = {n: _folder(tmp_path / "solo" / "runs" / n)[1]["final"]["val_loss"] for n in names}
    assert finals["xor-d2-lif-pre-lr0.001-t-0.5-s0"] != finals["xor-d2-lif-pre-lr0.02-t-0.5-s0"]
    with open(tmp_path / "packed" / "runs.csv") as f, open(tmp_path / "solo" / "runs.csv") as g:
        pa, so = ({os.path.basename(r["out"]): r for r in csv.DictReader(h)} for h in (f, g))
    for name in names:
        for col in NUMBERS:
            x, y = float(pa[name][col]), float(so[name][col])
            assert (x != x and y != y) or abs(x - y) <= 1e-10 * max(1.0, abs(y)), (name, col, x, y)
    assert (tmp_path / "packed" / "results.md").read_text().splitlines()[-8:] == \
        (tmp_path / "solo" / "results.md").read_text().splitlines()[-8:]
    again = run_sweep(spec, str(tmp_path / "packed"), progress=False)
    assert [r["status"] for r in again] == ["done"] * 8


def test_surrogate_scales_axis_packs_and_equals_its_solo_runs(tmp_path, capsys):
    """Runs that differ in the surrogate's width (and flossing mode) pack into one ensemble (members of their own
    widths: surroflos.surrogate.MemberSurrogate) whose run folders hold what their solo runs write."""
    spec = SweepSpec(tasks=["xor"], delays=[2], models=["lif"], flossing=["none", "pre"], seeds=[0],
                     surrogate_scales=[1.0, 6.0], base=dict(BASE))
    cfgs = expand(spec, str(tmp_path / "packed"))
    assert sorted(os.path.basename(c.out) for c in cfgs) == [
        "xor-d2-lif-none-ss1-s0", "xor-d2-lif-none-ss6-s0", "xor-d2-lif-pre-ss1-s0", "xor-d2-lif-pre-ss6-s0"]
    (pack,) = pack_runs(cfgs)
    assert sorted(m["surrogate_scale"] for m in pack_config(pack, str(tmp_path / "packed")).members) == [1, 1, 6, 6]
    solo = run_sweep(spec, str(tmp_path / "solo"), progress=False, ensemble=1)
    packed = run_sweep(spec, str(tmp_path / "packed"), progress=False, ensemble="auto")
    assert [r["status"] for r in solo] == [r["status"] for r in packed] == ["ran"] * 4
    names = assert_packed_runs_equal_solo(tmp_path, 4)
    finals = {n: _folder(tmp_path / "solo" / "runs" / n)[1]["final"]["val_loss"] for n in names}
    assert finals["xor-d2-lif-none-ss1-s0"] != finals["xor-d2-lif-none-ss6-s0"]  # the width matters
    assert "surrogate_scale" in (tmp_path / "packed" / "results.md").read_text()
    for v in (0, -1.0, float("nan"), "2"):
        with pytest.raises(ConfigError, match="surrogate_scales must be"):
            expand(SweepSpec(tasks=["xor"], delays=[2], base=dict(TINY), surrogate_scales=[v]), str(tmp_path / "x"))
    parse = cli.build_parser().parse_args
    assert spec_from_args(parse(["sweep", "--preset", "xor", "--surrogate-scales", "1", "4"])).surrogate_scales == [1, 4]
    with pytest.raises(SystemExit):
        parse(["sweep", "--surrogate-scales", "0"])
    assert "--surrogate-scales" in capsys.readouterr().err
