"""surroflos train --compare (surroflos.compare) and the study runner (surroflos.study)."""

import json

import pytest
import torch

import surroflos.train as train_mod
from surroflos import cli, stats
from surroflos.compare import DEFAULT_MEMBERS, arm_configs, compare, run_key
from surroflos.study import PRESETS, run_study, summary_table
from surroflos.train import ConfigError, TrainConfig

TINY = dict(model="lif", N=8, task="xor", delay=4, T=12, epochs=2, steps_per_epoch=2, batch=4, eval_batch=16, k=2,
            pre_steps=3, floss_T=20, floss_batch=2, spectrum_T=20, lyap_every=1, floss_lr=0.05)
TINY_FLAGS = ["--N", "8", "--delay", "4", "--T", "12", "--epochs", "2", "--steps-per-epoch", "2", "--batch", "4",
              "--eval-batch", "16", "--k", "2", "--pre-steps", "3", "--floss-T", "20", "--floss-batch", "2",
              "--spectrum-T", "20", "--no-progress"]


def _quiet(_):
    pass


def _cfg(tmp_path, name="cmp", **kw):
    return TrainConfig(**dict(TINY, out=str(tmp_path / name), ensemble=3, **kw))


def test_compare_same_seeds_same_data_and_its_json(tmp_path, monkeypatch):
    """Both arms train the same seeds from the same weights on the same batches; only flossing differs."""
    first = {}
    real = train_mod._sample

    def spy(task, batch, gen, device, dtype):
        out = real(task, batch, gen, device, dtype)
        if isinstance(gen, list) and batch == TINY["batch"]:  # a training batch of the ensemble
            first.setdefault(current[0], out[0].clone())
        return out

    current = [None]
    real_train = train_mod.train

    def tagged_train(cfg, **kw):
        current[0] = cfg.flossing
        return real_train(cfg, **kw)

    monkeypatch.setattr(train_mod, "_sample", spy)
    monkeypatch.setattr("surroflos.compare.train", tagged_train)
    res = compare(_cfg(tmp_path, success=0.55), progress=False, log=_quiet)  # a threshold some members cross
    assert set(first) == {"pre", "none"}
    assert first["pre"].shape[1] == 3 and torch.equal(first["pre"], first["none"])  # [T, E, B, n_in], identical

    out = tmp_path / "cmp"
    payload = json.loads((out / "result.json").read_text())
    assert (out / "comparison.png").stat().st_size > 0
    c = payload["comparison"]
    assert c == json.loads(json.dumps(res.comparison))
    assert c["metric"] == "accuracy" and c["success"] == 0.55 and c["higher_is_better"] is True
    f, u = c["flossed"], c["unflossed"]
    for a in (f, u):
        for key in ("n", "successes", "success_rate", "success_ci", "metric_mean", "metric_std", "metric_values",
                    "time_to_threshold", "lambda1_before", "lambda1_after", "seeds"):
            assert key in a, key
        assert a["n"] == 3 and len(a["metric_values"]) == 3
        assert a["successes"] == sum(v >= 0.55 for v in a["metric_values"])
        assert a["success_ci"] == pytest.approx(list(stats.wilson_interval(a["successes"], 3)))
    assert f["seeds"] == u["seeds"] == [0, 1, 2]
    assert f["flossing"] == "pre" and u["flossing"] == "none"
    # Same initial weights: the spectra before any flossing or training agree member by member.
    assert f["lambda1_before_members"] == u["lambda1_before_members"]
    rf = json.loads((out / "flossed" / "result.json").read_text())
    ru = json.loads((out / "unflossed" / "result.json").read_text())
    assert [m["spectrum_before"] for m in rf["members"]] == [m["spectrum_before"] for m in ru["members"]]
    assert rf["preflossing"]["steps"] == 3 and ru["preflossing"] is None
    assert f["lambda1_preflossed"] is not None and u["lambda1_preflossed"] is None
    assert rf["members"][0]["final"] != ru["members"][0]["final"] or f["lambda1_after"] != u["lambda1_after"]
    tests = c["tests"]
    assert tests["success"]["p_value"] == stats.fisher_exact(f["successes"], 3, u["successes"], 3)["p_value"]
    assert tests["success"]["table"] == [[f["successes"], 3 - f["successes"]], [u["successes"], 3 - u["successes"]]]
    assert tests["final_metric"]["n"] == [3, 3] and 0.0 <= tests["final_metric"]["p_value"] <= 1.0
    ttt = f["time_to_threshold"]
    assert tests["reached"]["table"] == [[ttt["reached"], 3 - ttt["reached"]],
                                         [u["time_to_threshold"]["reached"], 3 - u["time_to_threshold"]["reached"]]]
    assert len(ttt["epochs"]) == 3 and ttt["reached"] == sum(e is not None for e in ttt["epochs"])
    assert payload["arms"] == {"flossed": str(out / "flossed"), "unflossed": str(out / "unflossed")}
    # time to threshold: each member's first epoch at or above the threshold in its arm's metrics.jsonl
    for arm in ("flossed", "unflossed"):
        rows = [json.loads(s) for s in (out / arm / "metrics.jsonl").read_text().splitlines()]
        want = []
        for e in range(3):
            hit = [r["epoch"] for r in rows if r["accuracy"][e] >= 0.55]
            want.append(hit[0] if hit else None)
        assert c[arm]["time_to_threshold"]["epochs"] == want


@pytest.mark.slow
def test_compare_resumes_to_the_uninterrupted_result(tmp_path):
    full = compare(_cfg(tmp_path, "full", epochs=3), progress=False, log=_quiet)
    part = compare(_cfg(tmp_path, "part", epochs=3), progress=False, log=_quiet, stop_after=1)
    assert part.interrupted and part.comparison is None and not (tmp_path / "part" / "result.json").exists()
    lines = []
    again = compare(_cfg(tmp_path, "part", epochs=3), progress=False, log=lines.append, resume=True)
    assert any("resumed" in s for s in lines)
    for arm in ("flossed", "unflossed"):
        assert again.comparison[arm]["metric_values"] == full.comparison[arm]["metric_values"]
        assert again.comparison[arm]["lambda1_after"] == full.comparison[arm]["lambda1_after"]
    lines.clear()
    compare(_cfg(tmp_path, "part", epochs=3), progress=False, log=lines.append, resume=True)  # nothing left to do
    assert sum("reused" in s for s in lines) == 2


def test_arm_configs_and_run_key(tmp_path):
    arms = arm_configs(TrainConfig(**dict(TINY, out=str(tmp_path))))
    assert arms["flossed"].ensemble == arms["unflossed"].ensemble == DEFAULT_MEMBERS
    assert arms["flossed"].flossing == "pre" and arms["unflossed"].flossing == "none"
    assert arms["unflossed"].out == str(tmp_path / "unflossed")
    assert arms["flossed"].success == arms["unflossed"].success == 0.9  # accuracy's default threshold
    a = dict(arms["flossed"].to_dict())
    b = dict(arms["unflossed"].to_dict())
    assert {k for k in a if a[k] != b[k]} == {"flossing", "out"}
    # unflossed runs that differ only in flossing settings are the same run (shared by studies) ...
    u4 = arm_configs(TrainConfig(**dict(TINY, out="x", spectrum_k=2, k=1)))["unflossed"]
    u2 = arm_configs(TrainConfig(**dict(TINY, out="y", spectrum_k=2, pre_steps=9)))["unflossed"]
    assert run_key(u4) == run_key(u2)
    # ... but not when the spectra's size follows k, nor flossed runs with another k
    assert run_key(arm_configs(TrainConfig(**dict(TINY, k=1)))["unflossed"]) != run_key(arms["unflossed"])
    assert run_key(arm_configs(TrainConfig(**dict(TINY, k=1)))["flossed"]) != run_key(arms["flossed"])


@pytest.mark.parametrize("flags, match", [
    (["--flossing", "none"], "flossing is 'none'"),
    (["--ensemble", "1"], "--ensemble 2 or more"),
    (["--task", "pwm", "--delay", "4", "--T", "None"], "needs --success"),
    (["--model", "balanced", "--K", "4"], "ensemble trains rate, lif and cuba"),
    (["--distributed"], "drop --distributed"),
])
def test_compare_bad_flags_one_line_errors(tmp_path, capsys, flags, match):
    argv = ["train", "--compare", *TINY_FLAGS, "--out", str(tmp_path / "bad")]
    if "--T" in flags:  # pwm: its own trial length
        i = argv.index("--T")
        del argv[i:i + 2]
        flags = flags[:-2]
    assert cli.main(argv + flags) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad" / "flossed" / "checkpoint.pt").exists()


def test_compare_through_the_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli.main(["train", "--compare", *TINY_FLAGS, "--ensemble", "2", "--seed", "5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Fisher exact two-sided p =" in text and "Mann-Whitney U" in text and "95% Wilson" in text
    c = json.loads((out / "result.json").read_text())["comparison"]
    assert c["flossed"]["seeds"] == c["unflossed"]["seeds"] == [5, 6]
    for arm in ("flossed", "unflossed"):
        assert (out / arm / "checkpoint.pt").exists() and (out / arm / "result.json").exists()
    assert (out / "comparison.png").exists()


def test_compare_refuses_a_folder_in_place_of_its_files(tmp_path):
    (tmp_path / "cmp" / "comparison.png").mkdir(parents=True)
    with pytest.raises(ConfigError, match="is a folder"):
        compare(_cfg(tmp_path), progress=False, log=_quiet)


def test_study_cells_and_bad_specifications(tmp_path):
    from surroflos.errors import UsageError
    from surroflos.study import cell_configs

    todo = cell_configs(PRESETS["tiny"], str(tmp_path))
    assert [(c, f) for c, f, _, _ in todo] == [("b0.7", "pre-k1"), ("b0.7", "pre-k2"), ("b0.9", "pre-k2")]
    cfg = todo[2][2]
    assert (cfg.beta, cfg.k, cfg.ensemble, cfg.out) == (0.9, 2, 2, str(tmp_path / "b0.9" / "pre-k2"))
    assert todo[0][3] == todo[1][3] == str(tmp_path / "b0.7" / "unflossed")
    for change, match in ((dict(seeds=1), "seeds"), (dict(only={"nope": []}), "unknown cell"),
                          (dict(cells=[{"name": "unflossed", "set": {}}]), "plain folder names"),
                          (dict(base={"no_such_field": 1}), "no_such_field")):
        with pytest.raises(UsageError, match=match):
            cell_configs({**PRESETS["tiny"], "only": {}, **change}, str(tmp_path))


@pytest.mark.slow
def test_study_shares_the_unflossed_arm_and_writes_records(tmp_path):
    spec = json.loads(json.dumps(PRESETS["tiny"]))
    spec["base"]["epochs"] = 1
    spec["cells"], spec["only"] = spec["cells"][:1], {}
    lines = []
    rows = run_study(spec, str(tmp_path / "study"), log=lines.append, command="test")
    assert [(r["cell"], r["flossing_setting"]) for r in rows] == [("b0.7", "pre-k1"), ("b0.7", "pre-k2")]
    # the second comparison reuses the cell's unflossed arm
    assert sum("unflossed: finished run" in s for s in lines) == 1
    assert sorted(p.name for p in (tmp_path / "study" / "b0.7").iterdir()) == ["pre-k1", "pre-k2", "unflossed"]
    recs = [json.loads(s) for s in (tmp_path / "study" / "runs.jsonl").read_text().splitlines()]
    assert len(recs) == 2 * 2 * spec["seeds"]
    assert {(r["flossing_setting"], r["arm"], r["seed"]) for r in recs} == {
        (f, a, s) for f in ("pre-k1", "pre-k2") for a in ("flossed", "unflossed") for s in (0, 1)}
    unfl = [r["final"] for r in recs if r["arm"] == "unflossed"]
    assert unfl[:2] == unfl[2:]  # one run, reported for both settings
    md = (tmp_path / "study" / "summary.md").read_text()
    assert md.startswith("Command: `test`") and md == "Command: `test`\n\n" + summary_table(rows)
    assert len([s for s in md.splitlines() if s.startswith("| b0.7")]) == 2
    lines.clear()
    run_study(spec, str(tmp_path / "study"), log=lines.append)  # finished: nothing is trained again
    assert sum("finished run" in s for s in lines) == 4 and not any("arm (" in s for s in lines)


def _pool_row(cell, flossing, k, fs, fn, fr, us, un, ur):
    return {"cell": cell, "flossing_setting": f"{flossing}-k{k}", "config": {"flossing": flossing, "k": k},
            "comparison": {"flossed": {"successes": fs, "n": fn, "time_to_threshold": {"reached": fr}},
                           "unflossed": {"successes": us, "n": un, "time_to_threshold": {"reached": ur}}}}


def test_pooled_analysis_strata_pools_and_command(tmp_path, capsys):
    from surroflos.study import main, pooled_analysis, pooled_table

    rows = [_pool_row("a", "pre", 4, 7, 10, 9, 3, 10, 7), _pool_row("b", "pre", 4, 9, 10, 10, 6, 10, 8),
            _pool_row("a", "pre", 16, 1, 10, 6, 0, 10, 2), _pool_row("c", "during", 4, 6, 20, 13, 2, 20, 7)]
    res = pooled_analysis(rows)
    assert set(res) == {"preflossing, k = 4", "other flossing settings"}
    pre = res["preflossing, k = 4"]
    assert [s["cell"] for s in pre["strata"]] == ["a", "b"]
    assert pre["success"] == stats.mantel_haenszel([[[7, 3], [3, 7]], [[9, 1], [6, 4]]])
    assert pre["reached"] == stats.mantel_haenszel([[[9, 1], [7, 3]], [[10, 0], [8, 2]]])
    other = res["other flossing settings"]
    assert other["success"]["successes_a"] == 7 and other["success"]["n_b"] == 30
    table = pooled_table(res)
    assert "| preflossing, k = 4 | 2 | final success | 16/20 | 9/20 |" in table
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["--pool", str(path)]) == 0 and capsys.readouterr().out.strip() == table.strip()
    assert main(["--pool", str(tmp_path / "missing.jsonl")]) == 2
    assert "--pool" in capsys.readouterr().err


def test_make_train_runs_the_study_setting_it_claims(monkeypatch):
    """`make train` (the Makefile's MAIN_JOB) is the confirmed study cell with preflossing k = 4, seeds 0-7."""
    import pathlib
    import re
    import shlex

    text = (pathlib.Path(__file__).resolve().parents[1] / "Makefile").read_text()
    flags = shlex.split(re.search(r"^MAIN_JOB := (.*?)(?<!\\)$", text, re.M | re.S).group(1).replace("\\\n", " "))
    seen = {}
    monkeypatch.setattr(cli, "_cmd_compare", lambda cfg, args: seen.setdefault("cfg", cfg) and 0)
    cli.main(["train", *flags])
    spec = PRESETS["confirm"]
    want = TrainConfig.from_dict({**spec["base"], **spec["flossing"][0]["set"], "ensemble": 8, "seed": 0,
                                  "out": "outputs/train"})
    assert seen["cfg"] == want


def test_summary_row_of_a_task_without_delay():
    arm = {"successes": 3, "n": 10, "success_ci": list(stats.wilson_interval(3, 10)), "metric_mean": 0.8,
           "metric_std": 0.1, "time_to_threshold": {"median": 12, "reached": 5}, "lambda1_before": 0.01,
           "lambda1_preflossed": 0.0, "lambda1_after": -0.1}
    comparison = {"flossed": arm, "unflossed": dict(arm, lambda1_preflossed=None),
                  "tests": {"success": {"p_value": 1.0}, "final_metric": {"p_value": 0.5}}}
    gng = TrainConfig(task="gonogo_temporal", delay=36, T=None, beta=0.8, flossing="pre", k=4).to_dict()
    ff = TrainConfig(task="flipflop", delay=None, T=None, beta=0.8, flossing="pre", k=4).to_dict()
    table = summary_table([{"cell": "a", "config": gng, "comparison": comparison},
                           {"cell": "b", "config": ff, "comparison": comparison}])
    assert "| a | gonogo_temporal | 36 (8.0) |" in table and "| b | flipflop | – |" in table
