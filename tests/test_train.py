"""surroflos.train / surroflos.sweep: configuration errors, outputs, exact resumption, Ctrl-C, the CLI."""

import json
import math
import os

import pytest
import torch

from surroflos import cli
from surroflos.sweep import PRESETS, SweepSpec, run_sweep
from surroflos.train import ConfigError, TrainConfig, train

from _tolerance import rounding_tol

TINY = dict(model="rate", N=12, epochs=3, steps_per_epoch=2, batch=4, k=2, pre_steps=2, floss_T=16, floss_batch=2, T=20,
            spectrum_T=24, eval_batch=8, lyap_every=1, delay=4)


def _cfg(tmp_path, name="run", **kw) -> TrainConfig:
    return TrainConfig(**dict(TINY, out=str(tmp_path / name), **kw))


def _quiet(_):
    pass


@pytest.mark.parametrize("change, match", [
    (dict(task="no_such_task"), "unknown task 'no_such_task'; available tasks: .*xor"),
    (dict(delay=10_000), "delay"),
    (dict(k=13), "k=13"),
    (dict(model="gru"), "model must be one of"),
    (dict(flossing="sometimes"), "flossing must be one of"),
    (dict(lr=-1.0), "lr must be positive"),
    (dict(model="balanced", K=12), "K < N"),
    (dict(task="flipflop"), "delay"),
])
def test_bad_config_stops_at_once(tmp_path, change, match):
    with pytest.raises(ConfigError, match=match):
        train(_cfg(tmp_path, **change), progress=False, log=_quiet)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # nothing started


@pytest.mark.parametrize("model", ["rate", "lif"])
def test_run_writes_config_metrics_checkpoint_and_plots(tmp_path, model):
    cfg = TrainConfig(**dict(TINY, model=model, flossing="during", floss_every=1, floss_steps=1,
                             out=str(tmp_path / "run")))
    res = train(cfg, progress=False, log=_quiet)
    out = tmp_path / "run"
    for f in ("config.json", "metrics.jsonl", "checkpoint.pt", "result.json", "learning_curve.png",
              "spectrum.png", "lambda1.png"):
        assert (out / f).exists(), f
    assert (out / "raster.png").exists() == (model == "lif")
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert all("lambda1" in r and "accuracy" in r for r in lines)
    assert sum("flossing" in r for r in lines) == 2  # bouts before epochs 2 and 3
    result = json.loads((out / "result.json").read_text())
    assert result["final"]["metric"] == "accuracy" and 0.0 <= result["final"]["accuracy"] <= 1.0
    assert len(result["spectrum_before"]) == cfg.k and len(result["spectrum_after"]) == cfg.k
    assert result["preflossing"]["steps"] == cfg.pre_steps
    assert res.final["accuracy"] == lines[-1]["accuracy"]


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds" and not isinstance(v, dict)} for r in rows]


@pytest.mark.parametrize("flossing", ["none", "during"])
def test_resume_continues_exactly(tmp_path, flossing):
    extra = dict(flossing=flossing, floss_every=1, floss_steps=1)
    full = train(_cfg(tmp_path, "full", **extra), progress=False, log=_quiet)
    part = train(_cfg(tmp_path, "part", **extra), progress=False, stop_after=1, log=_quiet)
    assert part.interrupted and len(part.metrics) == 1
    assert not (tmp_path / "part" / "result.json").exists()
    resumed = train(_cfg(tmp_path, "part", **extra), resume=True, progress=False, log=_quiet)
    assert _strip(resumed.metrics) == _strip(full.metrics)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.spectrum_after == full.spectrum_after
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == TINY["epochs"]  # no duplicated epochs after resuming


def test_resume_rejects_changed_config_and_missing_checkpoint(tmp_path):
    train(_cfg(tmp_path), progress=False, stop_after=1, log=_quiet)
    with pytest.raises(ConfigError, match="lr"):
        train(_cfg(tmp_path, lr=0.1), resume=True, progress=False, log=_quiet)
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(_cfg(tmp_path, "fresh"), resume=True, progress=False, log=_quiet)
    # More epochs is a legal change: the run goes on from where it stopped.
    res = train(_cfg(tmp_path, epochs=4), resume=True, progress=False, log=_quiet)
    assert [r["epoch"] for r in res.metrics] == [1, 2, 3, 4]


def test_ctrl_c_keeps_last_epoch_and_resume_matches(tmp_path, monkeypatch):
    full = train(_cfg(tmp_path, "full", flossing="none"), progress=False, log=_quiet)
    import surroflos.train as tr

    real = tr.validate
    calls = {"n": 0}

    def interrupting_validate(cfg):
        task = real(cfg)
        loss = task.loss

        def loss_then_interrupt(*a, **k):
            calls["n"] += torch.is_grad_enabled()  # training steps only, not validation
            if calls["n"] == TINY["steps_per_epoch"] + 1:  # first step of epoch 2
                raise KeyboardInterrupt
            return loss(*a, **k)

        task.loss = loss_then_interrupt
        return task

    monkeypatch.setattr(tr, "validate", interrupting_validate)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, "cut", flossing="none"), progress=False, log=_quiet)
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert ck["state"]["epoch"] == 1
    monkeypatch.setattr(tr, "validate", real)
    resumed = train(_cfg(tmp_path, "cut", flossing="none"), resume=True, progress=False, log=_quiet)
    assert _strip(resumed.metrics) == _strip(full.metrics)


def test_cli_train_smoke_and_error(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["train", "--model", "rate", "--N", "12", "--epochs", "2", "--steps-per-epoch", "2", "--batch", "4",
            "--k", "2", "--pre-steps", "2", "--floss-T", "16", "--floss-batch", "2", "--spectrum-T", "24",
            "--eval-batch", "8", "--delay", "4", "--T", "20", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "spectrum before" in text and "spectrum after" in text
    assert (out / "result.json").exists()
    assert cli.main(["train", "--task", "nope", "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_sweep_runs_grid_resumes_and_writes_tables(tmp_path):
    spec = SweepSpec(**{**PRESETS["smoke"].__dict__, "success": 0.5})
    # ensemble=1: every run alone, with its checkpoint in its own folder (packed runs resume as packs,
    # tests/test_sweep_ensemble.py)
    rows = run_sweep(spec, str(tmp_path / "sw"), workers=1, progress=False, ensemble=1)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ran"}
    for f in ("runs.csv", "results.csv", "results.md", "plot_xor_rate.png", "sweep.json"):
        assert (tmp_path / "sw" / f).exists(), f
    md = (tmp_path / "sw" / "results.md").read_text()
    assert md.count("| xor | rate |") == 4
    # An interrupted run (checkpoint, no result) is resumed; finished runs are skipped.
    victim = rows[0]["out"]
    os.remove(os.path.join(victim, "result.json"))
    again = run_sweep(spec, str(tmp_path / "sw"), workers=1, progress=False, ensemble=1)
    status = {r["out"]: r["status"] for r in again}
    assert status[victim] == "resumed"
    assert sorted(status.values()).count("done") == 3
    assert [r["value"] for r in again] == [r["value"] for r in rows]
    first = {r["out"]: r["seconds"] for r in rows}
    for r in again:  # a reloaded run reports the training time it recorded, not the reload's
        if r["status"] == "done":
            assert r["seconds"] == first[r["out"]] > 0


def test_cli_sweep_smoke_two_workers(tmp_path, capsys):
    out = tmp_path / "cli_sweep"
    code = cli.main(["sweep", "--preset", "smoke", "--delays", "2", "--workers", "2", "--out", str(out),
                     "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "| xor | rate | none | 2 |" in text and "| xor | rate | pre | 2 |" in text
    assert "surroflos sweep --preset smoke" in (out / "results.md").read_text()


@pytest.mark.parametrize("init", ["orthogonal", "limit_cycle"])
def test_init_scheme_replaces_the_recurrent_weights(tmp_path, init):
    from surroflos import init as inits
    from surroflos.train import build_initialized_model, build_model, validate

    cfg = _cfg(tmp_path, init=init, g=1.3, nonlinearity="relu", rate_dt=0.5)
    task = validate(cfg)
    plain = build_model(cfg, task, torch.device("cpu"), torch.float32)
    model = build_initialized_model(cfg, task, torch.device("cpu"), torch.float32)
    assert model.dt == 0.5 and model.nonlinearity == "relu"
    W = model.weight_rec.detach().double()
    assert not torch.allclose(W, plain.weight_rec.detach().double())
    if init == "orthogonal":  # all singular values equal the gain
        # g Q built in float64 and rounded once to float32: |dW_ij| <= eps |W_ij|, so (Weyl) every singular value
        # moves by at most ||dW||_2 <= ||dW||_F <= eps ||W||_F = eps g sqrt(N) (tolerance policy: tests/_tolerance.py)
        torch.testing.assert_close(torch.linalg.svdvals(W), torch.full((cfg.N,), 1.3, dtype=torch.float64),
                                   rtol=0, atol=rounding_tol(torch.float32, 1.3 * math.sqrt(cfg.N)))
    else:  # block diagonal 2x2 rotations
        assert float(W[0, 2:].abs().max()) == 0.0 and float(W[0, :2].abs().max()) > 1.0
    again = build_initialized_model(cfg, task, torch.device("cpu"), torch.float32)
    assert torch.equal(again.weight_rec, model.weight_rec)  # seeded
    with pytest.raises(ConfigError, match="init must be one of"):
        validate(_cfg(tmp_path, init="xavier"))
    with pytest.raises(ConfigError, match="sparse"):
        validate(_cfg(tmp_path, init="gaussian", model="balanced", K=4))
    assert sorted(inits.SCHEMES) == ["balanced", "gaussian", "limit_cycle", "orthogonal"]


@pytest.mark.parametrize("model", ["lif", "cuba", "balanced"])
def test_surrogate_scale_sets_the_width_of_the_trained_networks_surrogate(tmp_path, model):
    from surroflos import surrogate as sg
    from surroflos.train import build_model, validate

    kw = dict(model=model, surrogate="superspike", K=4)
    cfg = _cfg(tmp_path, surrogate_scale=7.5, **kw)
    task = validate(cfg)
    net = build_model(cfg, task, torch.device("cpu"), torch.float32)
    assert (net.surrogate.name, net.surrogate.scale) == ("superspike", 7.5)
    default = build_model(_cfg(tmp_path, **kw), task, torch.device("cpu"), torch.float32)
    assert default.surrogate.scale == sg.SURROGATES["superspike"][1]  # None keeps the surrogate's own width
    # The width reaches the surrogate gradient: sigma'(0.5) = 1 / (scale |x| + 1)^2.
    x = torch.tensor([0.5], requires_grad=True)
    net.surrogate(x).sum().backward()
    assert float(x.grad) == pytest.approx(1.0 / (7.5 * 0.5 + 1.0) ** 2, rel=1e-6)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="surrogate_scale"):
            validate(_cfg(tmp_path, surrogate_scale=bad, **kw))
