"""Packaging layout: the repo's top-level ``kernels/``, ``tasks/`` and
``export/`` folders must install as ``surroflos.kernels``, ``surroflos.tasks``
and ``surroflos.export`` -- for both a regular and an editable install -- and
nothing importable as top-level ``kernels``, ``tasks`` or ``export`` may appear.

Each install goes into a throw-away location under ``tmp_path`` and is checked
from a fresh interpreter whose working directory is outside the repo. The
current environment's packages (torch, setuptools, ...) are exposed through a
directory of symlinks that leaves out any existing surroflos install and any
unrelated top-level ``kernels``/``tasks``/``export``, so the developer's own
``.venv`` is only read, never modified, and cannot mask the result.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("kernels", "tasks", "export")
TIMEOUT = 300

# Runs in the fresh interpreter: import the subpackages, report where they
# came from, and check that the bare top-level names are not importable.
PROBE = r"""
import importlib, json
import surroflos.kernels, surroflos.tasks, surroflos.export
out = {"surroflos": surroflos.__file__, "files": {}, "bare": {}}
for name in ("kernels", "tasks", "export"):
    out["files"][name] = importlib.import_module("surroflos." + name).__file__
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        out["bare"][name] = ["ModuleNotFoundError", exc.name]
    else:
        out["bare"][name] = ["imported", getattr(mod, "__file__", None)]
print("PROBE-RESULT " + json.dumps(out))
"""


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
    )
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=TIMEOUT,
    )
    assert proc.returncode == 0, (
        f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    return proc.stdout


def _is_excluded(entry: str) -> bool:
    low = entry.lower()
    stem = low.split(".")[0].split("-")[0]
    return (
        stem in ("surroflos", *SUBPACKAGES)
        or low.startswith("__editable__")
        or low.endswith((".pth", ".egg-link"))
        or low == "__pycache__"
    )


def _deps_dir(tmp_path: Path) -> Path:
    """Symlink farm of the current interpreter's site-packages (torch & co.)."""
    candidates = list(site.getsitepackages())
    candidates += [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    deps = tmp_path / "deps"
    deps.mkdir()
    for d in dict.fromkeys(Path(c).resolve() for c in candidates):
        if not d.is_dir():
            continue
        for entry in d.iterdir():
            target = deps / entry.name
            if _is_excluded(entry.name) or target.exists() or target.is_symlink():
                continue
            target.symlink_to(entry, target_is_directory=entry.is_dir())
    return deps


def _pip_available() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0, f"pip is required for this test:\n{proc.stderr}"


def _probe(python: str | Path, cwd: Path, env: dict[str, str], *flags: str) -> dict:
    out = _run([python, *flags, "-c", PROBE], cwd=cwd, env=env)
    lines = [ln for ln in out.splitlines() if ln.startswith("PROBE-RESULT ")]
    assert lines, f"probe printed no result:\n{out}"
    return json.loads(lines[-1][len("PROBE-RESULT "):])


def _check_probe(result: dict, surroflos_dir: Path, sub_dir) -> None:
    assert Path(result["surroflos"]).resolve() == (surroflos_dir / "__init__.py").resolve()
    for name in SUBPACKAGES:
        got = Path(result["files"][name]).resolve()
        assert got == (sub_dir(name) / "__init__.py").resolve(), (name, got)
        assert result["bare"][name] == ["ModuleNotFoundError", name], (
            f"top-level {name!r} must not be importable: {result['bare'][name]}"
        )


def _copy_source(dst: Path) -> Path:
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__",
        ".pytest_cache", "outputs", "runs", "results", "*.pyc",
    )
    shutil.copytree(REPO, dst, ignore=ignore, symlinks=True)
    return dst


def test_regular_and_editable_install_layout(tmp_path: Path) -> None:
    _pip_available()
    env = _clean_env()
    deps = _deps_dir(tmp_path)
    workdir = tmp_path / "work"  # empty cwd outside the repo
    workdir.mkdir()

    # --- regular (non-editable) install into a --target directory ----------
    # Built from a clean copy of the source so stale build/ dirs in the repo
    # cannot leak into the wheel (and the repo is not written to).
    src = _copy_source(tmp_path / "src")
    target = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps",
          "--no-build-isolation", "--target", target, src], cwd=workdir, env=env)

    for name in SUBPACKAGES:
        assert not (target / name).exists(), f"top-level {name}/ installed in {target}"
        assert not (target / f"{name}.py").exists()
    assert (target / "surroflos" / "kernels" / "__init__.py").is_file()

    # -S: do not process the current environment's .pth files (e.g. the
    # developer's editable install); everything comes from PYTHONPATH.
    regular_env = dict(env, PYTHONPATH=os.pathsep.join([str(target), str(deps)]))
    result = _probe(sys.executable, workdir, regular_env, "-S")
    _check_probe(result, target / "surroflos", lambda n: target / "surroflos" / n)

    # --- editable install into a fresh, throw-away venv ----------------------
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=workdir, env=env)
    vpy = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(_run([vpy, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                        cwd=workdir, env=env).strip())
    purelib.mkdir(parents=True, exist_ok=True)
    # Plain path line: makes torch, pip and setuptools importable in the venv.
    (purelib / "_surroflos_test_deps.pth").write_text(f"{deps}\n")

    _run([vpy, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
          "-e", REPO], cwd=workdir, env=env)
    for name in SUBPACKAGES:
        assert not (purelib / name).exists(), f"top-level {name}/ installed in {purelib}"

    result = _probe(vpy, workdir, env)
    _check_probe(result, REPO / "surroflos", lambda n: REPO / n)
