"""surroflos.mechanism: spectra, slow modes and gradient propagation of a --compare folder's networks."""

import json

import pytest

from surroflos.compare import compare
from surroflos.mechanism import CONDITIONS, flossing_mechanism, main, summary_table
from surroflos.train import TrainConfig

TINY = dict(model="lif", N=8, task="xor", delay=4, T=12, epochs=2, steps_per_epoch=2, batch=4, eval_batch=16, k=2,
            pre_steps=3, floss_T=20, floss_batch=2, spectrum_T=20, lyap_every=1, floss_lr=0.05, ensemble=3)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("mech") / "cmp"
    compare(TrainConfig(**TINY, out=str(out)), progress=False, log=lambda _m: None)
    return out


def test_spectra_are_the_runs_own_and_the_summaries_follow_from_them(compared):
    rec = flossing_mechanism(str(compared), lags=6, trajectories=2, spectrum_k=2, n_probe=2, log=lambda _m: None)
    assert tuple(rec["conditions"]) == CONDITIONS and rec["delay"] == 4 and rec["lags"] == [1, 2, 3, 4, 5, 6]
    flossed = json.loads((compared / "flossed" / "result.json").read_text())
    unflossed = json.loads((compared / "unflossed" / "result.json").read_text())
    c = rec["conditions"]
    # Same estimator, inputs and seeds as the training run: the very numbers in its result.json.
    assert c["init"]["spectrum"] == flossed["spectrum_before"] == unflossed["spectrum_before"]
    assert c["trained_flossed"]["spectrum"] == flossed["spectrum_after"]
    assert c["trained_unflossed"]["spectrum"] == unflossed["spectrum_after"]
    assert c["preflossed"]["spectrum"] != c["init"]["spectrum"]  # preflossing changed the networks
    for cond in c.values():
        assert len(cond["gradient_log_norm"]) == 3 and all(len(r) == 6 for r in cond["gradient_log_norm"])
        assert cond["gradient_at_delay"] == [r[3] for r in cond["gradient_log_norm"]]
        assert cond["slow_modes"] == [sum(abs(v) * 4 < 1 for v in s) for s in cond["spectrum"]]
        assert cond["lambda1"] == [s[0] for s in cond["spectrum"]]
        m = cond["stats"]["gradient_at_delay"]
        assert m["n"] == 3 and m["ci"][0] <= m["mean"] <= m["ci"][1]
        assert m["mean"] == pytest.approx(sum(cond["gradient_at_delay"]) / 3, rel=1e-12)
    assert set(rec["tests"]) == {f"{a} vs {b}: {k}" for a, b in (("preflossed", "init"),
                                                                 ("trained_flossed", "trained_unflossed"))
                                 for k in ("lambda1", "slow_modes", "gradient_at_delay")}
    table = summary_table(rec)
    assert all(f"| {name} |" in table for name in CONDITIONS) and "Wilcoxon" in table


def test_command_writes_its_files_and_refuses_in_one_line(compared, tmp_path, capsys):
    out = tmp_path / "m"
    assert main([str(compared), "--out", str(out), "--lags", "5", "--trajectories", "2", "--spectrum-k", "2"]) == 0
    assert {p.name for p in out.iterdir()} == {"mechanism.json", "mechanism.md", "mechanism.png"}
    assert json.loads((out / "mechanism.json").read_text())["lags"] == [1, 2, 3, 4, 5]
    capsys.readouterr()
    assert main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a finished `surroflos train --compare` folder" in err[0]
    assert not (tmp_path / "nowhere").exists()
    assert main([str(compared), "--lags", "0"]) == 2
    assert "--lags must be a positive integer" in capsys.readouterr().err
