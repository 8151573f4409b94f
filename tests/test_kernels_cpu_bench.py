"""``surroflos bench --config cpu_kernels`` (issue 17's LIF cases, the Synaptic case and Norse's LIF / LIF box on
the compiled CPU kernels) in quick mode: the rows, their checks against snnTorch's loop or Norse's module and
the targets are there; and ``--config cpu`` runs the same cases in the same run."""

import pytest
import torch

from surroflos import bench
from surroflos.kernels import backend as kb

pytestmark = pytest.mark.skipif(not kb.cpu_kernels_importable(), reason="numba does not import")

KERNEL_CASES = ["lif_N64", "lif_N256", "synaptic_N64", "norse_lif_N64", "norse_box_N64", "rnn_train_N32"]
NORSE_ROWS = ["norse", "ours_torch", "ours_cpu", "ours_dropin"]


def _ctx():
    return bench.Context(device=torch.device("cpu"), repeats=3, budget_s=0.2, quick=True, compile_backend=None)


def _assert_norse_case(case, box):
    """A Norse case: Norse 1.1's own module is the baseline, every row timed and checked (against Norse in float32,
    and within the tolerance policy's bound against Norse in float64)."""
    T, B, N = 16, 4, 64
    assert case["baseline"] == "norse" and case["group"] == "cpu_kernels"
    assert case["shapes"] == {"T": T, "B": B, "N": N} and case["dtype"] == "float32"
    assert case["floor"]["bytes"] == bench.norse_floor_bytes(T, B, N, 4) == 6 * T * B * N * 4
    own = "LIFBoxCell loop" if box else "norse.torch.LIF"
    assert case["check_reference"].startswith(f"Norse 1.1 {own} in float32 on x[:, :4]")
    assert case["inputs"] == ("0.5 N(0,1) + 1" if box else "0.5 N(0,1) + 0.15")
    rows = {r["name"]: r for r in case["implementations"]}
    assert list(rows) == NORSE_ROWS
    for name, r in rows.items():
        assert r["status"] == "ok", r
        assert r["runs"] >= 3 and 0 < r["q1_ms"] <= r["median_ms"] <= r["q3_ms"], r
        assert r["speedup_vs_baseline"] == pytest.approx(rows["norse"]["median_ms"] / r["median_ms"])
        chk = r["check"]
        assert "error" not in chk, chk
        assert chk["spikes_compared"] == T * 4 * N and chk["spike_mismatches"] == 0, (name, chk)
        assert chk["mem_max_abs_err"] == 0.0, (name, chk)  # our forwards are Norse's operations in Norse's order
        assert chk["within_tolerance"] is True, (name, chk)
        for k in ("membrane", "dx"):
            v = chk["vs_float64"][k]
            assert 0 <= v["err"] <= v["bound"] and v["bound"] >= 4 * v["reference_err"] > 0, (name, k, v)
        assert "f64: " in chk["summary"] and chk["summary"].endswith(" ok")
    assert rows["norse"]["check"]["grad_rel_err"] == 0.0  # the reference against itself
    assert "Norse 1.1" in rows["norse"]["label"] and "auto" in rows["ours_dropin"]["label"]
    targets = {t["text"]: t for t in case["targets"]}
    assert set(targets) == {">= 50% of the bandwidth floor", ">= 5x Norse"}
    t = targets[">= 5x Norse"]
    assert t["value"] == pytest.approx(rows["norse"]["median_ms"] / rows["ours_cpu"]["median_ms"])
    assert t["result"] == ("pass" if t["value"] >= 5.0 else "fail")


def test_cpu_kernels_config_quick():
    payload = bench.run_config("cpu_kernels", _ctx())
    assert payload["status"] == "ok"
    assert [c["name"] for c in payload["cases"]] == KERNEL_CASES
    for case in payload["cases"]:
        if case["name"].startswith("norse"):
            _assert_norse_case(case, box=case["name"].startswith("norse_box"))
            continue
        rows = {r["name"]: r for r in case["implementations"]}
        results = {t["text"]: t["result"] for t in case["targets"]}
        if case["name"].startswith("rnn_train"):  # the recurrent training step with the compiled forward
            assert list(rows) == ["snntorch", "norse", "ours_torch", "ours_compiled", "ours_cpu"]
            for name in ("ours_torch", "ours_cpu"):  # same weights as snnTorch's network: checked against it
                assert rows[name]["status"] == "ok", rows[name]
                assert rows[name]["check"]["out_rel_err"] < 1e-5 and rows[name]["check"]["grad_rel_err"] < 1e-4
            (target,) = case["targets"]
            assert target["subject"] == "ours_cpu" and target["other"] == "snntorch"
            assert target["value"] == pytest.approx(rows["snntorch"]["median_ms"] / rows["ours_cpu"]["median_ms"])
            continue
        if case["name"].startswith("lif"):
            assert list(rows) == ["snntorch", "ours_torch", "ours_cpu", "ours_cpu_2t", "ours_dropin", "ours_compiled"]
            assert rows["ours_compiled"]["status"].startswith("skipped")
            assert len(results) == 4 and results[">= 3x torch.compile of the step"].startswith("n/a")
        else:
            assert list(rows) == ["snntorch", "ours_torch", "ours_cpu", "ours_cpu_2t", "ours_dropin"]
            assert case["check_reference"].startswith("snnTorch Synaptic loop")
            assert case["floor"]["bytes"] == bench.synaptic_floor_bytes(16, 4, 64, 4)
            assert len(results) == 3
        for name in ("ours_torch", "ours_cpu", "ours_cpu_2t", "ours_dropin"):
            assert rows[name]["status"] == "ok", rows[name]
            assert rows[name]["check"]["spike_mismatches"] == 0 and rows[name]["check"]["grad_rel_err"] < 1e-4
        assert all(r in ("pass", "fail") for k, r in results.items() if "compile" not in k)
    assert "load_average" in payload["device"]
    table = bench.format_table(payload)
    assert "Norse 1.1 norse.torch.LIF" in table and "Norse 1.1 LIFBoxCell, Python loop" in table
    assert "target [ours_cpu] >= 5x Norse" in table


def test_cpu_config_runs_the_kernel_cases_in_the_same_run():
    """``--config cpu``: its own four cases, then every cpu_kernels case (Norse's included) in the same payload."""
    payload = bench.run_config("cpu", _ctx())
    assert payload["status"] == "ok" and "note" not in payload
    names = [c["name"] for c in payload["cases"]]
    assert names == ["lif", "rnn_train", "lyapunov_forward", "lyapunov_forward_backward"] + KERNEL_CASES
    assert [c["group"] for c in payload["cases"]] == ["cpu"] * 4 + ["cpu_kernels"] * len(KERNEL_CASES)
    by = {c["name"]: c for c in payload["cases"]}
    _assert_norse_case(by["norse_lif_N64"], box=False)
    _assert_norse_case(by["norse_box_N64"], box=True)
    lif = {r["name"]: r for r in by["lif_N64"]["implementations"]}
    assert lif["ours_cpu"]["status"] == "ok" and lif["ours_cpu"]["check"]["spike_mismatches"] == 0
