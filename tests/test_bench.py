"""The benchmark suite (surroflos.bench): JSON schema, table, derived numbers, guards, timing, oracles.

The quick CPU run checks the schema and recomputes every derived number (floor bytes, fraction of the
floor, speedups) independently from the raw medians and shapes; the unit tests check that a broken
implementation is reported instead of raised, that the timer measures a known delay, that target
evaluation can fail, that the output check catches a wrong neuron, and the naive Lyapunov loop
against a linear map with known exponents.
"""

import argparse
import json
import time

import pytest
import torch

from surroflos import bench


def _parse(argv):
    parser = argparse.ArgumentParser(prog="surroflos")
    sub = parser.add_subparsers(dest="command")
    p = bench.add_bench_parser(sub)
    assert isinstance(p, argparse.ArgumentParser)
    return parser.parse_args(["bench", *argv])


def _ctx(**kw):
    kw.setdefault("device", torch.device("cpu"))
    kw.setdefault("repeats", 3)
    kw.setdefault("budget_s", 0.2)
    kw.setdefault("quick", True)
    kw.setdefault("compile_backend", "eager")
    return bench.Context(**kw)


def _check_row(row, case):
    assert {"name", "label", "status"} <= set(row)
    if row["status"] != "ok":
        assert row["status"].startswith(("unavailable: ", "skipped: ")), row["status"]
        return
    assert row["runs"] >= 3
    assert 0 < row["q1_ms"] <= row["median_ms"] <= row["q3_ms"]
    assert row["iqr_ms"] == pytest.approx(row["q3_ms"] - row["q1_ms"])
    assert row["first_call_s"] > 0
    # Derived numbers recomputed from the raw medians.
    assert row["fraction_of_floor"] == pytest.approx(case["floor"]["ms"] / row["median_ms"])
    base = next(r for r in case["implementations"] if r["name"] == case["baseline"])
    assert row["speedup_vs_baseline"] == pytest.approx(base["median_ms"] / row["median_ms"])


def test_cpu_quick_json_and_table(tmp_path, capsys):
    args = _parse(["--config", "cpu", "--quick", "--out", str(tmp_path), "--budget", "0.2",
                   "--compile-backend", "eager"])
    assert args.func is bench.run_bench
    assert bench.run_bench(args) == 0
    out = capsys.readouterr().out
    payload = json.loads((tmp_path / "bench_cpu.json").read_text())

    assert payload["schema"] == bench.SCHEMA and payload["config"] == "cpu" and payload["status"] == "ok"
    assert payload["quick"] is True and payload["device"]["type"] == "cpu"
    for lib in ("torch", "triton", "snntorch", "norse", "surroflos"):
        assert lib in payload["versions"]
    assert payload["versions"]["torch"] == torch.__version__
    names = [c["name"] for c in payload["cases"]]
    # its own cases, then config cpu_kernels' in the same run (tests/test_kernels_cpu_bench.py checks those rows)
    assert names == ["lif", "rnn_train", "lyapunov_forward", "lyapunov_forward_backward", "lif_N64", "lif_N256",
                     "synaptic_N64", "norse_lif_N64", "norse_box_N64", "rnn_train_N32"]
    assert [c["group"] for c in payload["cases"]] == ["cpu"] * 4 + ["cpu_kernels"] * 6
    for case in payload["cases"]:
        assert {"title", "dtype", "shapes", "floor", "baseline", "implementations", "targets"} <= set(case)
        fl = case["floor"]
        assert fl["ms"] == pytest.approx(max(fl["bandwidth_ms"], fl.get("compute_ms", 0.0)))
        assert fl["bandwidth_ms"] == pytest.approx(fl["bytes"] / (fl["copy_bandwidth_GBps"] * 1e9) * 1e3)
        rows = {r["name"]: r for r in case["implementations"]}
        assert rows[case["baseline"]]["status"] == "ok"
        assert rows[case["baseline"]]["speedup_vs_baseline"] == pytest.approx(1.0)
        for r in case["implementations"]:
            _check_row(r, case)
            assert r["label"] in out
        assert case["title"] in out

    lif = payload["cases"][0]
    T, B, N = (lif["shapes"][k] for k in ("T", "B", "N"))
    # x read, spikes + membrane written; cotangent + membrane read, dx written: six float32 tensors.
    assert lif["floor"]["bytes"] == 6 * T * B * N * 4
    rows = {r["name"]: r for r in lif["implementations"]}
    assert set(rows) == {"snntorch", "norse", "ours_torch", "ours_dropin", "ours_compiled"}
    assert rows["ours_compiled"]["compile_backend"] == "eager" and rows["ours_compiled"]["compile_s"] >= 0
    # The drop-in reproduces snnTorch's numbers: its check against the snnTorch loop is exact-ish.
    chk = rows["ours_dropin"]["check"]
    assert chk["spike_mismatches"] == 0 and chk["grad_rel_err"] < 1e-4
    (target,) = lif["targets"]
    assert target["subject"] == "ours_torch" and target["other"] == "snntorch"
    if rows["ours_torch"]["status"] == "ok":
        assert target["value"] == pytest.approx(rows["snntorch"]["median_ms"] / rows["ours_torch"]["median_ms"])
        assert target["result"] == ("pass" if target["value"] >= 2.0 else "fail")
    assert "target [ours_torch]" in out
    lyap = {r["name"]: r for r in payload["cases"][2]["implementations"]}
    assert lyap["ours_torch"]["check"]["lambda_max_abs_err"] < 1e-4  # same spectrum as the naive loop


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA behaviour")
def test_gpu_config_skipped_without_cuda(tmp_path, capsys):
    assert bench.main(["--config", "2", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "bench_2.json").read_text())
    assert payload["status"].startswith("skipped") and payload["cases"] == []
    assert "skipped: no CUDA device" in capsys.readouterr().out
    assert bench.main(["--config", "1", "--device", "cuda", "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize("config", ["1", "2", "3", "4"])
def test_gpu_config_smoke_on_cpu(config, tmp_path, capsys):
    # --device cpu runs a GPU configuration's code on the CPU; Triton rows and H100 targets are n/a.
    # (compiled rows are covered by the cpu test; skipping them here saves dynamo's tracing time)
    args = _parse(["--config", config, "--quick", "--device", "cpu", "--out", str(tmp_path), "--budget", "0.2",
                   "--compile-backend", "none"])
    assert bench.run_bench(args) == 0
    payload = json.loads((tmp_path / f"bench_{config}.json").read_text())
    assert payload["status"] == "ok" and payload["target_device"] == "H100" and not payload["on_target_device"]
    assert payload["cases"]
    for case in payload["cases"]:
        rows = {r["name"]: r for r in case["implementations"]}
        assert rows["ours_triton"]["status"].startswith("unavailable: needs a CUDA device")
        if "ours_compiled" in rows:
            assert rows["ours_compiled"]["status"] == "skipped: --compile-backend none"
        assert all(t["result"].startswith("n/a") for t in case["targets"])
        for r in case["implementations"]:
            _check_row(r, case)
    assert "this device is" in capsys.readouterr().out


def test_unavailable_implementation_is_reported():
    ctx = _ctx()

    def broken_build():
        raise ImportError("no module named fancy_kernels")

    def fails_when_run():
        return bench.Built(forward=lambda x: (_ for _ in ()).throw(RuntimeError("kernel launch failed")))

    rec = bench._measure(ctx, bench.Impl("a", "A", broken_build), lambda b: b.run)
    assert rec["status"] == "unavailable: ImportError: no module named fancy_kernels"
    assert "median_ms" not in rec
    rec = bench._measure(ctx, bench.Impl("b", "B", fails_when_run), lambda b: lambda: b.forward(None))
    assert rec["status"] == "unavailable: RuntimeError: kernel launch failed"
    rec = bench._measure(ctx, bench.Impl("c", "C", fails_when_run, needs_cuda=True), lambda b: b.run)
    assert rec["status"].startswith("unavailable: needs a CUDA device")
    rec = bench._measure(_ctx(compile_backend=None), bench.Impl("d", "D", fails_when_run, compiled=True),
                         lambda b: b.run)
    assert rec["status"] == "skipped: --compile-backend none"
    case = {"implementations": [{"name": "a", "label": "A", "status": "unavailable: ImportError: x"},
                                {"name": "s", "label": "S", "status": "ok", "median_ms": 2.0}],
            "baseline": "s", "floor": {"ms": 1.0}}
    bench._finish_case(case)
    t = bench.evaluate_target(case, bench._target("x", "speedup", "a", 2.0, "s"))
    assert t["result"] == "n/a: a unavailable" and t["value"] is None


def test_interleaved_rounds_report_a_late_failure():
    calls = {"n": 0}

    def flaky():
        def run():
            calls["n"] += 1
            if calls["n"] > 4:  # survives build and warm-up, fails while being timed
                raise RuntimeError("illegal memory access")
        return bench.Built(run=run)

    impls = [bench.Impl("ok", "OK", lambda: bench.Built(run=lambda: time.sleep(0.001))),
             bench.Impl("flaky", "Flaky", flaky)]
    ctx = _ctx()
    assert ctx.interleave and not ctx.cuda
    ok, bad = bench._run_impls(ctx, impls, lambda b: b.run)
    assert ok["status"] == "ok" and ok["blocks"] >= 3 and "interleaved" in ok["timer"]
    assert bad["status"] == "unavailable: RuntimeError: illegal memory access" and "median_ms" not in bad


def test_timer_measures_a_known_delay():
    delay = 0.004
    r = bench.time_callable(lambda: time.sleep(delay), _ctx(budget_s=0.1))
    assert r["runs"] >= 3
    assert delay * 1e3 <= r["median_ms"] < delay * 1e3 + 40  # a loaded machine only adds time
    assert r["iqr_ms"] >= 0


def test_evaluate_target_pass_fail():
    rows = [{"name": "ours", "status": "ok", "median_ms": 10.0, "peak_mem_mib": 100.0},
            {"name": "snn", "status": "ok", "median_ms": 45.0, "peak_mem_mib": 90.0}]
    case = bench._finish_case({"implementations": rows, "baseline": "snn", "floor": {"ms": 8.0}})
    ev = lambda *a: bench.evaluate_target(case, bench._target("t", *a))  # noqa: E731
    assert ev("fraction", "ours", 0.7)["result"] == "pass"  # 8 / 10 = 80 %
    assert ev("fraction", "ours", 0.9)["result"] == "fail"
    assert ev("speedup", "ours", 4.0, "snn")["value"] == pytest.approx(4.5)
    assert ev("speedup", "ours", 5.0, "snn")["result"] == "fail"
    assert ev("memory", "ours", 1.0, "snn")["result"] == "fail"  # 100 MiB > 90 MiB
    assert ev("memory", "snn", 1.0, "ours")["result"] == "pass"
    rows[0]["peak_mem_mib"] = None
    assert ev("memory", "ours", 1.0, "snn")["result"].startswith("n/a")


def test_output_check_catches_a_wrong_neuron():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, 20, generator=gen) * 0.5 + 0.15
    g = torch.randn(30, 3, 20, generator=gen)
    ref = bench._reference(bench._snntorch_forward("cpu"), [], x, g, True)
    check = bench._seq_check(ref, x, g, True, True)
    right = check(bench.Built(forward=bench._snntorch_forward("cpu")))
    assert right["spike_mismatches"] == 0 and right["mem_max_abs_err"] == 0 and right["grad_rel_err"] == 0

    def leakier(x):  # beta 0.8 instead of 0.9
        mem, spks, mems = torch.zeros_like(x[0]), [], []
        for t in range(x.shape[0]):
            reset = (mem > bench.THRESHOLD).to(x.dtype)
            mem = 0.8 * mem + x[t] - reset * bench.THRESHOLD
            spks.append(bench._snn_leaky("cpu").spike_grad(mem - bench.THRESHOLD))
            mems.append(mem)
        return torch.stack(spks), torch.stack(mems)

    wrong = check(bench.Built(forward=leakier))
    assert wrong["spike_mismatches"] > 0 and wrong["mem_max_abs_err"] > 0.05 and wrong["grad_rel_err"] > 0.01


def test_norse_check_catches_a_wrong_neuron():
    """The Norse rows' check (against Norse in float32, and within the tolerance policy's bound of Norse in
    float64) passes our neuron and fails a wrong coefficient, inputs rounded to bfloat16 (an error far above
    float32 rounding) and a row without a membrane trace."""
    from surroflos import norse as ours

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, 20, generator=gen) * 0.5 + 0.6  # fires within 60 steps
    g = torch.randn(60, 3, 20, generator=gen)
    check = bench._truth_check(lambda: bench._norse_own_forward("cpu", box=False, record=True), x, g,
                               bench.NORSE_OPS_PER_STEP["lif"])
    right = check(bench.Built(forward=bench._norse_dropin_forward("cpu", False, "torch", record=True)))
    assert right["within_tolerance"] is True and right["spike_mismatches"] == 0, right
    assert right["vs_float64"]["membrane"]["reference_err"] > 0  # float32 Norse is off the float64 truth

    def recorded(mod):
        return lambda xx: (lambda z, s: (z, s.v))(*mod(xx))

    slower = ours.LIF(ours.LIFParameters(tau_syn_inv=torch.tensor(190.0)), record_states=True)  # Norse: 200
    wrong = check(bench.Built(forward=recorded(slower)))
    assert wrong["within_tolerance"] is False and wrong["summary"].endswith("FAIL")
    assert wrong["vs_float64"]["membrane"]["err"] > wrong["vs_float64"]["membrane"]["bound"]
    f = bench._norse_dropin_forward("cpu", False, "torch", record=True)
    rounded = check(bench.Built(forward=lambda xx: f(xx.to(torch.bfloat16).to(xx.dtype))))
    assert rounded["within_tolerance"] is False
    no_trace = check(bench.Built(forward=lambda xx: (f(xx)[0], None)))
    assert no_trace["within_tolerance"] is False and "mem_max_abs_err" not in no_trace
    assert no_trace["vs_float64"]["membrane"]["err"] is None


def test_naive_lyapunov_on_a_linear_map():
    from surroflos._random import orthonormal_frame
    from surroflos.models import LinearMap

    # Upper triangular (non-normal): the exponents are log |diagonal|, sorted.
    diag = torch.tensor([1.5, 0.9, 0.4, 0.2], dtype=torch.float64)
    A = torch.diag(diag) + torch.triu(torch.full((4, 4), 0.7, dtype=torch.float64), diagonal=1)
    model = LinearMap(A)
    T, B, k = 300, 2, 3
    gen = torch.Generator().manual_seed(3)
    x = torch.zeros(T, B, 0, dtype=torch.float64)
    lam = bench.naive_lyapunov(model, x, k, torch.randn(B, 4, generator=gen, dtype=torch.float64),
                               orthonormal_frame(B, 4, k, generator=gen, dtype=torch.float64))
    expected = diag.log()[:k]
    assert lam.shape == (B, k)
    assert torch.allclose(lam, expected.expand(B, k), atol=0.02)


def test_cli_wiring_and_driver(tmp_path, capsys):
    import importlib.util
    import pathlib

    from surroflos import cli

    args = cli.build_parser().parse_args(["bench", "--config", "cpu", "--quick"])
    assert args.func is bench.run_bench and args.config == "cpu" and args.quick
    # benchmarks/run_all.py: one `surroflos bench` call per configuration, printed before it runs.
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"
    spec = importlib.util.spec_from_file_location("run_all", path)
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    # `cpu` runs the cpu_kernels cases itself: the default CPU list must not run them a second time
    assert run_all.CPU_CONFIGS[0] == "cpu" and "cpu_kernels" not in run_all.CPU_CONFIGS
    if not torch.cuda.is_available():
        assert run_all.main(["--configs", "3", "--results", str(tmp_path), "--tag", "t"]) == 0
        assert (tmp_path / "t" / "bench_3.json").exists()
        assert "$ surroflos bench --config 3 --out" in capsys.readouterr().out


def test_ensemble_config_quick(tmp_path, capsys):
    """--config ensemble: both implementations run, throughput and saved activation memory are reported,
    and the memory an ensemble saves for the backward grows linearly with E (it is E networks' worth)."""
    args = _parse(["--config", "ensemble", "--quick", "--out", str(tmp_path), "--budget", "0.2"])
    assert bench.run_bench(args) == 0
    payload = json.loads((tmp_path / "bench_ensemble.json").read_text())
    assert payload["status"] == "ok" and payload["target_device"] is None
    cases = {c["name"]: c for c in payload["cases"]}
    assert set(cases) == {"E1", "E4"}
    for case in cases.values():
        rows = {r["name"]: r for r in case["implementations"]}
        assert rows["solo"]["status"] == rows["ensemble"]["status"] == "ok"
        E = case["shapes"]["E"]
        assert rows["ensemble"]["network_steps_per_s"] == pytest.approx(E / (rows["ensemble"]["median_ms"] * 1e-3))
    m1, m4 = cases["E1"]["saved_activation_mib"], cases["E4"]["saved_activation_mib"]
    assert 3.5 <= m4["ensemble"] / m1["ensemble"] <= 4.5
    assert 3.5 <= m4["solo"] / m1["solo"] <= 4.5
    assert "network-epochs/s" in capsys.readouterr().out


def test_cpu_lyapunov_quick(tmp_path, capsys):
    """--config cpu_lyapunov (issue 17's Lyapunov cases): rate and LIF (atan, triangle; ours with QR every step
    and every 10), forward and forward+backward, ours checked against the naive loop, targets evaluated."""
    args = _parse(["--config", "cpu_lyapunov", "--quick", "--out", str(tmp_path), "--budget", "0.2", "--repeats", "3"])
    assert bench.run_bench(args) == 0
    payload = json.loads((tmp_path / "bench_cpu_lyapunov.json").read_text())
    assert payload["status"] == "ok"
    names = [c["name"] for c in payload["cases"]]
    variants = ["rate"] + [f"lif_{s}_q{q}" for s, q in (("atan", 1), ("atan", 10), ("triangle", 1), ("triangle", 10))]
    assert names == [f"lyapunov_{v}_{w}" for w in ("forward", "forward_backward") for v in variants]
    for case in payload["cases"]:
        rows = {r["name"]: r for r in case["implementations"]}
        assert set(rows) == {"naive", "ours_torch"} and case["baseline"] == "naive"
        assert rows["ours_torch"]["check"]["lambda_max_abs_err"] < 1e-4  # same spectrum as the naive loop
        assert len(case["targets"]) == 1 and case["targets"][0]["text"].startswith(">= ")
    assert "lyapunov_lif_triangle_q10_forward" in capsys.readouterr().out
