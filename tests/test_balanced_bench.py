"""benchmarks/balanced_scaling.py runs (at a tiny size) and writes its table and JSON."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_balanced_scaling_script_writes_json(tmp_path):
    out = tmp_path / "b.json"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "balanced_scaling.py"), "--sizes", "2000",
                          "3000", "--K", "20", "--steps", "5", "--json", str(out)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert [r["N"] for r in rec["runs"]] == [2000, 3000]
    for r in rec["runs"]:
        assert r["K"] == 20 and r["steps"] == 5 and r["per_step_ms"] > 0 and r["peak_rss_GiB"] > 0
    assert "2000" in res.stdout and "wrote" in res.stdout
