"""surroflos.sweep grid axes (gains x rules x local flossing): expansion, names, tables, gain plots, CLI."""

import csv
import itertools
import json
import os

import pytest

from surroflos import cli
from surroflos.sweep import PRESETS, SweepSpec, expand, spec_from_args
from surroflos.train import ConfigError, TrainConfig

TINY = {"N": 8, "epochs": 2, "steps_per_epoch": 2, "batch": 4, "k": 2, "pre_steps": 2, "floss_T": 16,
        "floss_batch": 2, "lyap_every": 1, "spectrum_T": 32, "eval_batch": 8}


def test_axes_expand_to_every_combination_but_local_without_flossing(tmp_path):
    spec = SweepSpec(tasks=["xor"], delays=[2], models=["rate"], flossing=["none", "pre"], seeds=[0, 1],
                     gains=[0.5, 1.5], rules=["bptt", "eprop"], local=[False, True], base=dict(TINY))
    cfgs = expand(spec, str(tmp_path))
    got = {os.path.basename(c.out): c for c in cfgs}
    assert len(got) == len(cfgs)  # one folder per run
    want = set()
    for fl, g, rule, local, seed in itertools.product(["none", "pre"], ["0.5", "1.5"], ["bptt", "eprop"],
                                                      [False, True], [0, 1]):
        if local and fl == "none":
            continue
        want.add(f"xor-d2-rate-{fl}-g{g}" + ("" if rule == "bptt" else f"-{rule}") + ("-local" if local else "")
                 + f"-s{seed}")
    assert set(got) == want and len(want) == 2 * 2 * 3 * 2
    for name, cfg in got.items():
        assert cfg.g == float(name.split("-g")[1].split("-")[0])
        assert cfg.rule == ("eprop" if "-eprop" in name else "bptt")
        assert cfg.local_flossing == name.endswith(f"-local-s{cfg.seed}")
        assert not (cfg.local_flossing and cfg.flossing == "none")
        assert cfg.N == 8 and cfg.out == os.path.join(str(tmp_path), "runs", name)


@pytest.mark.parametrize("preset", sorted(set(PRESETS) - {"gain"}))
def test_default_axes_leave_existing_presets_unchanged(tmp_path, preset):
    """Default axes: the same names (finished sweeps still resume) and the same configurations as
    building the TrainConfig from the preset's base directly."""
    spec = PRESETS[preset]
    cfgs = expand(spec, str(tmp_path))
    assert len(cfgs) == (len(spec.tasks) * len(spec.delays) * len(spec.models) * len(spec.flossing)
                         * len(spec.seeds))
    for cfg, (task, delay, model, fl, seed) in zip(cfgs, itertools.product(spec.tasks, spec.delays, spec.models,
                                                                            spec.flossing, spec.seeds)):
        name = f"{task}-d{delay}-{model}-{fl}-s{seed}"
        assert cfg.out == os.path.join(str(tmp_path), "runs", name)
        ref = TrainConfig(**dict(spec.base, task=task, delay=delay, model=model, flossing=fl, seed=seed),
                          out=cfg.out)
        assert cfg == ref


def test_axis_errors_are_reported_before_any_run(tmp_path):
    def bad(**kw):
        with pytest.raises(ConfigError) as e:
            expand(SweepSpec(**{"tasks": ["xor"], "delays": [2], "base": dict(TINY), **kw}), str(tmp_path))
        return str(e.value)

    assert "rules" in bad(base=dict(TINY, rule="eprop"))
    assert "gains" in bad(gains=[-1.0])
    assert "gains" in bad(gains=[float("nan")])
    assert "share the folder" in bad(gains=[1, 1.0])
    assert "no runs" in bad(flossing=["none"], local=[True])
    assert "no rules" in bad(rules=[])
    assert "rule must be one of" in bad(rules=["hebb"])
    assert "supports the models" in bad(models=["cuba"], rules=["eprop"])


def test_cli_axes_flags_build_the_spec():
    args = cli.build_parser().parse_args(["sweep", "--preset", "smoke", "--gains", "0.5", "2", "--rules", "bptt",
                                          "eprop", "--local", "no", "yes"])
    spec = spec_from_args(args)
    assert spec.gains == [0.5, 2.0] and spec.rules == ["bptt", "eprop"] and spec.local == [False, True]
    assert spec.tasks == PRESETS["smoke"].tasks  # the preset's other axes stay
    plain = spec_from_args(cli.build_parser().parse_args(["sweep", "--preset", "smoke"]))
    assert (plain.gains, plain.rules, plain.local) == ([None], ["bptt"], [False])
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["sweep", "--rules", "hebb"])


def test_gain_preset_is_seed_003_grid():
    spec = PRESETS["gain"]
    assert sorted(spec.tasks) == ["2afc", "dms", "romo"] and spec.delays == [None]
    assert spec.base["T"] is None and spec.models == ["rate"] and spec.base["nonlinearity"] == "relu"
    assert set(spec.rules) == {"bptt", "eprop"} and spec.flossing == ["none", "pre"] and True in spec.local
    assert len(spec.gains) >= 3 and len(spec.seeds) >= 2
    cfgs = expand(spec, "unused")
    modes = {(c.flossing, c.local_flossing) for c in cfgs}
    assert modes == {("none", False), ("pre", False), ("pre", True)}  # local preflossing beside the global one
    assert len(cfgs) == 3 * len(spec.gains) * 2 * 3 * len(spec.seeds)


def test_smoke_gain_sweep_writes_axes_table_and_gain_plots(tmp_path, capsys):
    out = tmp_path / "gain"
    argv = ["sweep", "--preset", "smoke", "--delays", "2", "--flossing", "pre", "--gains", "0.5", "1.5",
            "--rules", "eprop", "--local", "yes", "--workers", "1", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    md = (out / "results.md").read_text()
    assert "| task | model | flossing | delay | g | rule | local | metric |" in md
    for g in ("0.5", "1.5"):
        assert f"| xor | rate | pre | 2 | {g} | eprop | yes | accuracy |" in md
    for f in ("gain_xor_rate.png", "gain_curves_xor_rate.png", "results.csv", "runs.csv"):
        assert (out / f).stat().st_size > 0, f
    assert not (out / "curves_xor_rate.png").exists()  # replaced by the gain curves
    with open(out / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert sorted(float(r["g"]) for r in runs) == [0.5, 1.5]
    for r in runs:
        assert r["rule"] == "eprop" and r["local"] == "True"
        res = json.loads(open(os.path.join(r["out"], "result.json")).read())
        # The configuration that ran is the axis value; the row's numbers are the run's own.
        assert res["config"]["g"] == float(r["g"]) and res["config"]["rule"] == "eprop"
        assert res["config"]["local_flossing"] is True
        assert float(r["lambda1_before"]) == pytest.approx(res["spectrum_before"][0])
        losses = [json.loads(line)["val_loss"] for line in open(os.path.join(r["out"], "metrics.jsonl"))]
        assert float(r["loss_auc"]) == pytest.approx(sum(losses) / len(losses))
    with open(out / "results.csv") as f:
        cells = list(csv.DictReader(f))
    assert list(cells[0])[:7] == ["task", "model", "flossing", "delay", "g", "rule", "local"]
    # A larger initial gain gives a less stable network (larger lambda_1 at initialisation).
    lam = {float(r["g"]): float(r["lambda1_before"]) for r in runs}
    assert lam[1.5] > lam[0.5]
    # Finished runs are skipped on a second call (same names).
    assert cli.main(argv) == 0
    again = (out / "results.md").read_text()
    assert again == md


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_local_flossing_equals_flossing_for_relu_rate_networks(nonlinearity):
    """Why the gain sweep's local and global preflossing runs agree to the last digit: the Jacobian of a
    ReLU rate network, (1 - dt) I + dt J diag(relu'(h)), depends on the state only through the
    piecewise-constant activation pattern, so the gradient path through the state that local flossing
    detaches carries zero. For tanh it does not vanish, and the two updates differ."""
    import torch

    import surroflos

    def flossed(local: bool) -> torch.Tensor:
        net = surroflos.RateRNN(1, 12, 1, g=1.5, dt=0.2, nonlinearity=nonlinearity,
                                generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        surroflos.floss(net, 3, k=2, T=24, batch=2, lr=1e-2, local=local, progress=False,
                        generator=torch.Generator().manual_seed(1))
        return net.weight_rec.detach().clone()

    w_global, w_local = flossed(False), flossed(True)
    if nonlinearity == "relu":
        torch.testing.assert_close(w_local, w_global, rtol=1e-12, atol=1e-14)
    else:
        assert (w_local - w_global).abs().max() > 1e-6
