"""``surroflos bench --config event`` (quick sizes): the payload's structure and its built-in check that the
naive O(N) loop and the heap loop give the same spikes. Timings are measured, never asserted."""

from __future__ import annotations

import json

from surroflos import bench


def test_event_bench_quick(tmp_path, capsys):
    assert bench.main(["--config", "event", "--quick", "--out", str(tmp_path), "--repeats", "3", "--budget", "1"]) == 0
    payload = json.loads((tmp_path / "bench_event.json").read_text())
    assert payload["schema"] == bench.SCHEMA and payload["config"] == "event" and payload["status"] == "ok"
    assert "numba" in payload["versions"]
    sim, spec = payload["cases"]
    assert sim["name"] == "simulate" and spec["name"] == "spectrum"
    names = [(r["N"], r["name"]) for r in sim["rows"]]
    assert names == [(N, name) for N in (1000, 4000) for name in ("heap", "lazy", "calendar", "naive", "stepped")]
    for r in sim["rows"]:
        assert r["status"] == "ok", r["status"]
        s = r["spikes_per_s"]
        assert s["runs"] >= 3 and 0 < s["q1"] <= s["median"] <= s["q3"]
        if r["name"] in ("heap", "lazy", "calendar"):
            assert r["spikes_per_cpu_s"]["median"] > 0 and r["cost_growth"] > 0
        if r["name"] == "naive":
            assert r["check"]["same_spikes_as_heap"] is True
    assert all(t["result"].startswith("n/a") for t in sim["targets"])
    assert [r["k"] for r in spec["rows"]] == [1, 10, 200]
    out = capsys.readouterr().out
    assert "config event" in out and "same 200 spikes as heap" in out
