"""``surroflos bench --config cpu_kernels`` (issue 17's LIF cases and the Synaptic case on the compiled CPU
kernels) in quick mode: the rows, their checks against snnTorch's loop and the targets are there."""

import pytest
import torch

from surroflos import bench
from surroflos.kernels import backend as kb

pytestmark = pytest.mark.skipif(not kb.cpu_kernels_importable(), reason="numba does not import")


def test_cpu_kernels_config_quick():
    ctx = bench.Context(device=torch.device("cpu"), repeats=3, budget_s=0.2, quick=True, compile_backend=None)
    payload = bench.run_config("cpu_kernels", ctx)
    assert payload["status"] == "ok"
    assert [c["name"] for c in payload["cases"]] == ["lif_N64", "lif_N256", "synaptic_N64"]
    for case in payload["cases"]:
        rows = {r["name"]: r for r in case["implementations"]}
        results = {t["text"]: t["result"] for t in case["targets"]}
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
