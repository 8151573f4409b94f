"""``surroflos sweep --engine ray``: each job (ensemble pack or resumed solo run) is a Ray task writing the same
run folders, tables and plots as the local engine; finished runs are not rerun, interrupted ones resume; Ctrl-C
and SIGTERM of the driver leave no task running; a missing Ray is a one-line error naming the extra.

One local Ray instance (2 CPUs) serves the whole module: starting Ray takes seconds."""

import builtins
import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from _processes import alive as _alive, cmdline as _cmdline, default_sigint, reap as _reap, stat as _stat, wait as _wait
from surroflos import cli
from surroflos.sweep import SweepSpec, plan, run_sweep
from surroflos.train import ConfigError, TrainConfig, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"N": 8, "T": 20, "epochs": 2, "steps_per_epoch": 2, "batch": 4, "k": 2, "pre_steps": 2, "floss_T": 16,
        "floss_batch": 2, "lyap_every": 1, "spectrum_T": 16, "eval_batch": 8}

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="finds processes through /proc")


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray instance for this module; yields its address (for CLI subprocesses)."""
    ray = pytest.importorskip("ray", reason="the Ray engine needs the extra surroflos[distributed]")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _spec(**kw) -> SweepSpec:
    return SweepSpec(**{"tasks": ["xor"], "delays": [2], "models": ["rate"], "flossing": ["none", "pre"],
                        "seeds": [0, 1], "base": dict(TINY), **kw})


def _rows(out) -> dict:
    with open(os.path.join(out, "runs.csv"), newline="") as f:
        return {os.path.basename(r["out"]): r for r in csv.DictReader(f)}


def _result(out, name) -> dict:
    with open(os.path.join(out, "runs", name, "result.json")) as f:
        res = json.load(f)
    kept = {k: res[k] for k in ("final", "spectrum_before", "spectrum_after") if k in res}
    kept["preflossing"] = {k: v for k, v in (res.get("preflossing") or {}).items() if k != "seconds"}  # timing
    return kept


def _metrics(out, name) -> list:
    with open(os.path.join(out, "runs", name, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in f if line.strip()]


def test_ray_sweep_writes_what_the_local_engine_writes(tmp_path, ray_address):
    """Two packs of two seeds (no flossing / preflossing) as Ray tasks against the same grid run in this process:
    the same run folders with the same results (the same float32 operations on one thread each), the same
    tables and plots."""
    ray_out, local_out = str(tmp_path / "ray"), str(tmp_path / "local")
    ray_rows = run_sweep(_spec(), ray_out, engine="ray", progress=False)
    local_rows = run_sweep(_spec(), local_out, engine="local", workers=1, progress=False)
    assert [r["status"] for r in ray_rows] == ["ran"] * 4, ray_rows
    assert [r["status"] for r in local_rows] == ["ran"] * 4, local_rows
    assert sorted(os.listdir(os.path.join(ray_out, "packs"))) == sorted(os.listdir(os.path.join(local_out, "packs")))
    names = sorted(os.listdir(os.path.join(local_out, "runs")))
    assert names == sorted(os.listdir(os.path.join(ray_out, "runs"))) and len(names) == 4
    for name in names:
        assert _result(ray_out, name) == _result(local_out, name), name
        assert _metrics(ray_out, name) == _metrics(local_out, name), name
    for f in ("results.md", "results.csv", "runs.csv", "plot_xor_rate.png", "curves_xor_rate.png"):
        assert os.path.exists(os.path.join(ray_out, f)), f
    keep = ("value", "val_loss", "lambda1_before", "lambda1_preflossed", "lambda1_after", "status")
    assert {n: {k: r[k] for k in keep} for n, r in _rows(ray_out).items()} == \
        {n: {k: r[k] for k in keep} for n, r in _rows(local_out).items()}


def test_ray_sweep_skips_finished_runs_and_resumes_interrupted_ones(tmp_path, ray_address):
    out = str(tmp_path / "sw")
    spec = _spec(flossing=["none"], seeds=[0, 1, 2])
    cfgs = {os.path.basename(c.out): c for c, _ in plan(spec, out)}
    # seed 0 finished, seed 1 interrupted after its first epoch (a checkpoint), seed 2 never started
    train(cfgs["xor-d2-rate-none-s0"], progress=False, log=lambda s: None)
    train(cfgs["xor-d2-rate-none-s1"], progress=False, log=lambda s: None, stop_after=1)
    done_before = os.stat(os.path.join(out, "runs", "xor-d2-rate-none-s0", "result.json")).st_mtime_ns
    rows = {os.path.basename(r["out"]): r for r in run_sweep(spec, out, engine="ray", progress=False)}
    assert {n: r["status"] for n, r in rows.items()} == {"xor-d2-rate-none-s0": "done",
                                                          "xor-d2-rate-none-s1": "resumed",
                                                          "xor-d2-rate-none-s2": "ran"}
    assert os.stat(os.path.join(out, "runs", "xor-d2-rate-none-s0", "result.json")).st_mtime_ns == done_before
    # the resumed run continued exactly: what an uninterrupted run of that seed computes
    ref = TrainConfig.from_dict(dict(cfgs["xor-d2-rate-none-s1"].to_dict(), out=str(tmp_path / "ref")))
    train(ref, progress=False, log=lambda s: None)
    with open(os.path.join(ref.out, "result.json")) as f:
        expected = json.load(f)
    assert _result(out, "xor-d2-rate-none-s1")["final"] == expected["final"]
    # a second call finds everything finished and runs nothing
    again = run_sweep(spec, out, engine="ray", progress=False)
    assert {r["status"] for r in again} == {"done"}


def test_pack_sizes_no_node_can_hold_are_refused(tmp_path, ray_address):
    with pytest.raises(ConfigError, match="--gpus-per-pack 0.5 but no node .* GPU"):
        run_sweep(_spec(seeds=[0]), str(tmp_path / "g"), engine="ray", gpus_per_pack=0.5, progress=False)
    with pytest.raises(ConfigError, match="--cpus-per-pack 3 but no node"):
        run_sweep(_spec(seeds=[0]), str(tmp_path / "c"), engine="ray", cpus_per_pack=3, progress=False)
    assert not os.path.exists(tmp_path / "g" / "runs" / "xor-d2-rate-none-s0" / "metrics.jsonl")


def test_packs_given_a_gpu_train_on_it_with_the_same_run_definitions():
    from surroflos.sweep import _on_gpu, config_hash, pack_config, pack_runs

    cfgs = [c for c, _ in plan(_spec(flossing=["none"]), "/nonexistent/out")]
    (pack,) = pack_runs(cfgs)
    job = {"ensemble": pack_config(pack, "/nonexistent/out").to_dict(), "members": [c.to_dict() for c in pack]}
    moved = _on_gpu(job)
    assert {moved["ensemble"]["device"]} | {d["device"] for d in moved["members"]} == {"cuda"}
    assert [config_hash(d) for d in moved["members"]] == [config_hash(c) for c in pack]
    assert job["ensemble"]["device"] == "cpu"  # the driver's copy is left alone
    assert _on_gpu(cfgs[0].to_dict())["device"] == "cuda"


def test_missing_ray_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    out = tmp_path / "sw"
    code = cli.main(["sweep", "--preset", "smoke", "--engine", "ray", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "surroflos[distributed]" in err and "--engine ray" in err, err
    assert not out.exists()  # refused before anything was written


def test_an_address_without_a_cluster_is_one_line_before_anything_is_written(tmp_path, capsys):
    pytest.importorskip("ray", reason="the Ray engine needs the extra surroflos[distributed]")
    import socket

    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "sw"
    code = cli.main(["sweep", "--preset", "smoke", "--engine", "ray", "--address", f"127.0.0.1:{port}",
                     "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot reach a Ray cluster" in err, err
    assert not out.exists()


def test_ray_flags_with_the_local_engine_are_refused(tmp_path, capsys):
    code = cli.main(["sweep", "--preset", "smoke", "--gpus-per-pack", "0.5", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "--engine ray only" in err and err.count("\n") == 1, err


# ---------------------------------------------------------------------------------------------------------
# A stopped driver leaves no work behind
# ---------------------------------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st is not None:
                parents[int(d)] = st[1]
    found, frontier = [], {pid}
    while frontier:
        kids = {p for p, pp in parents.items() if pp in frontier and p not in found}
        found += sorted(kids)
        frontier = kids
    return found


def _task_processes() -> list[int]:
    """Ray worker processes running a sweep task (their title is ``ray::_ray_job``)."""
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and _alive(int(d))
            and _cmdline(int(d)).startswith("ray::_ray_job")]


# Two runs of thousands of tiny epochs: mid-training when the driver is stopped.
_LONG = ["sweep", "--preset", "smoke", "--delays", "2", "--epochs", "5000", "--engine", "ray", "--ensemble", "1",
         "--no-progress"]  # two solo runs: two Ray tasks (none and pre would otherwise share one pack)


def _start(tmp_path, extra):
    out = tmp_path / "sw"
    log = open(tmp_path / "sweep.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "surroflos", *_LONG, "--out", str(out), *extra], cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=default_sigint)
    log.close()
    runs = [out / "runs" / f"xor-d2-rate-{fl}-s0" / "metrics.jsonl" for fl in ("none", "pre")]
    if not _wait(lambda: proc.poll() is None and all(p.exists() and p.stat().st_size > 0 for p in runs), 180):
        proc.kill()
        proc.wait()
        pytest.fail("the sweep did not start both runs:\n" + (tmp_path / "sweep.log").read_text())
    return proc, out


def _stop_and_check(proc, out, tmp_path, sig, tracked) -> None:
    try:
        os.kill(proc.pid, sig)
        try:
            code = proc.wait(timeout=120)  # a bound for a loaded machine (60 s was exceeded at load 8)
        except subprocess.TimeoutExpired:
            code = None
        log = (tmp_path / "sweep.log").read_text()
        assert code == 130, log
        # Generous bound for a loaded machine: an orphan would run for thousands of epochs.
        gone = _wait(lambda: not any(_alive(p) for p in tracked()), 60.0)
        assert gone, "still running: " + ", ".join(f"{p} {_cmdline(p)[:60]}" for p in tracked() if _alive(p))
        assert "Traceback" not in log, log
    finally:
        _reap(proc, tracked())
    # the same command continues: both runs have a checkpoint to resume
    from surroflos.sweep import spec_from_args

    spec = spec_from_args(cli.build_parser().parse_args(_LONG + ["--out", str(out)]))
    assert {os.path.basename(c.out): s for c, s in plan(spec, str(out))} == {"xor-d2-rate-none-s0": "resume",
                                                                           "xor-d2-rate-pre-s0": "resume"}


@needs_proc
@pytest.mark.isolated
def test_ctrl_c_of_a_driver_on_a_cluster_cancels_its_tasks(tmp_path, ray_address):
    """The driver connects to a running cluster (this module's instance, through --address): Ctrl-C cancels the
    tasks it submitted; the cluster itself stays up."""
    before = set(_task_processes())
    proc, out = _start(tmp_path, ["--address", ray_address])
    assert _wait(lambda: len(set(_task_processes()) - before) == 2, 60), "two Ray tasks should be training"
    tasks = sorted(set(_task_processes()) - before)
    _stop_and_check(proc, out, tmp_path, signal.SIGINT, lambda: tasks)
    import ray

    assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 2  # the cluster is still there


@needs_proc
@pytest.mark.isolated
def test_sigterm_of_a_driver_shuts_its_local_ray_down(tmp_path, ray_address):
    """Without --address the driver starts a local Ray instance; SIGTERM cancels the tasks and shuts that
    instance down: no process the driver started outlives it."""
    proc, out = _start(tmp_path, [])
    started = _descendants(proc.pid)  # Ray's processes (GCS, raylet, agents) and its task workers
    assert any(_cmdline(p).startswith("ray::_ray_job") for p in started), [_cmdline(p)[:60] for p in started]
    _stop_and_check(proc, out, tmp_path, signal.SIGTERM, lambda: started)
