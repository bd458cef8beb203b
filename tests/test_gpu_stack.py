"""The GPU suite on the GPU machine's stack, as far as a CPU allows.

The GPU machine runs the suite under its own image, not under requirements.txt: Python 3.12,
torch 2.11, triton 3.6, transformers 5.17, no deepspeed, no datasets, no network (the versions
are in requirements-gpu-stack.txt). These tests build a separate virtual environment from that
file (torch 2.13.0, the CPU wheel, stands in for torch 2.11; the Python is the one running the
tests) and run in it, with the repository on PYTHONPATH as scripts/gpu_check.sh does:
every module the suite and scripts/gpu_check.sh import, `gpu_suite.py --dry-run`, and the whole
`--cpu-smoke` run without matplotlib (results written, the missing plot named, exit 0).

The environment is cached under $LCIRC_CACHE_DIR (default ~/.cache/lcirc_fast)/gpu-stack/,
keyed by the pins file, the Python version and the machine; it is built once (about 2-3 min,
pip needs a package index) and reused. A pip that cannot reach its index fails the test with
the reason: the check is not skipped.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "requirements-gpu-stack.txt"
ABSENT = ("deepspeed", "datasets", "matplotlib")   # not in the environment, on purpose
GPU_ABSENT = ("deepspeed", "datasets")             # not on the GPU machine either
# the server's own packages (requirements.txt): not on the GPU machine's image, which runs the
# benchmarks and the GPU suite, not `lcirc serve`; lcirc_fast.serving alone may need them
SERVING_ONLY = ("fastapi", "starlette", "uvicorn", "prometheus_client", "pydantic")
PIP_TIMEOUT_S = 1800


def _pins() -> dict[str, str]:
    """{distribution name (lower case, '-'): version} from requirements-gpu-stack.txt."""
    out = {}
    for line in PINS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{PINS.name}: every line pins one version: {line!r}"
            out[name.strip().lower().replace("_", "-")] = version.strip()
    return out


def _env_dir() -> Path:
    cache = Path(os.path.expanduser(os.environ.get("LCIRC_CACHE_DIR") or "~/.cache/lcirc_fast"))
    key = hashlib.sha256("\n".join([PINS.read_text(), platform.python_version(),
                                    platform.machine(), sys.platform]).encode()).hexdigest()[:16]
    return cache / "gpu-stack" / f"py{sys.version_info[0]}{sys.version_info[1]}-{key}"


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (two test runs building one environment wait for each other)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pip(py: Path, *args: str) -> subprocess.CompletedProcess:
    """pip in the environment; an unreachable index fails within minutes, not after pip's
    default retries of long timeouts."""
    return subprocess.run([str(py), "-m", "pip", *args[:1], "--retries", "2", "--timeout", "60",
                           *args[1:]], capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                          env=_clean_env())


def _clean_env(**extra) -> dict:
    """The caller's environment less what would leak its own packages into the other one."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
           and not k.startswith("TRITON_")}
    env.update(PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", **extra)
    return env


def _fail_pip(what: str, proc: subprocess.CompletedProcess, where: Path) -> None:
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
    pytest.fail(f"could not build the GPU-stack environment ({what}: pip exited "
                f"{proc.returncode}). Its first build needs pip to reach a package index "
                f"(network, or a configured mirror) for the versions in {PINS.name}; it is then "
                f"cached in {where}.\n--- pip ---\n{tail}", pytrace=False)


def _build(env_dir: Path) -> None:
    if env_dir.exists():
        shutil.rmtree(env_dir)
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    py = env_dir / "bin" / "python"
    # Resolve first, install nothing: a torch that would pull CUDA libraries (gigabytes) stops
    # the build here instead of downloading them.
    report = env_dir / "resolve.json"
    proc = _pip(py, "install", "--dry-run", "--ignore-installed", "--report", str(report),
                "-r", str(PINS))
    if proc.returncode:
        _fail_pip("resolving", proc, env_dir)
    chosen = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
              for i in json.loads(report.read_text())["install"]}
    cuda = sorted(n for n in chosen if n.startswith("nvidia-"))
    if cuda or "+cu" in chosen.get("torch", ""):
        pytest.fail(f"{PINS.name} resolves torch {chosen.get('torch')} with CUDA libraries "
                    f"{cuda}: this test needs torch's CPU wheel (as requirements.txt's torch "
                    f"pin gets on the CI machine)", pytrace=False)
    leaked = sorted(n for n in ABSENT if n in chosen)
    assert not leaked, f"{PINS.name} pulls in {leaked}, which the GPU-stack check leaves out"
    proc = _pip(py, "install", "-q", "-r", str(PINS))
    if proc.returncode:
        _fail_pip("installing", proc, env_dir)
    freeze = _pip(py, "freeze", "--all")
    (env_dir / "freeze.txt").write_text(freeze.stdout)
    (env_dir / "complete").write_text(PINS.read_text())


@pytest.fixture(scope="module")
def stack_python() -> Path:
    """The GPU-stack environment's python (built on first use, then reused)."""
    env_dir = _env_dir()
    with _locked(env_dir.with_suffix(".lock")):
        if not (env_dir / "complete").exists():
            _build(env_dir)
    return env_dir / "bin" / "python"


def _run(py: Path, args: list[str], timeout: float, **env) -> subprocess.CompletedProcess:
    """Run in the GPU-stack environment from the repository root, the repository on
    PYTHONPATH (as scripts/gpu_check.sh runs the suite: nothing installed)."""
    return subprocess.run([str(py), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=_clean_env(PYTHONPATH=str(ROOT), **env))


_VERSIONS = textwrap.dedent("""
    import importlib.metadata as md, importlib.util, json, sys
    names = json.loads(sys.argv[1])
    print(json.dumps({"versions": {n: md.version(n) for n in names},
                      "absent": [m for m in json.loads(sys.argv[2])
                                 if importlib.util.find_spec(m) is None],
                      "python": sys.version.split()[0]}))
""")


def test_stack_has_the_pinned_versions_and_lacks_the_absent_packages(stack_python):
    pins = _pins()
    proc = _run(stack_python, ["-c", _VERSIONS, json.dumps(sorted(pins)), json.dumps(ABSENT)], 60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    for name, version in pins.items():
        have = got["versions"][name]
        assert have.split("+")[0] == version, f"{name} {have} in the environment, pinned {version}"
    assert "+cu" not in got["versions"]["torch"]
    assert sorted(got["absent"]) == sorted(ABSENT)


_IMPORTS = textwrap.dedent("""
    import importlib, importlib.util, json, pkgutil, sys, traceback
    failed = {}

    def load(name, path=None):
        try:
            if path is None:
                importlib.import_module(name)
            else:
                spec = importlib.util.spec_from_file_location(name, path)
                mod = importlib.util.module_from_spec(spec)
                sys.modules[name] = mod
                spec.loader.exec_module(mod)
        except BaseException:
            failed[name] = traceback.format_exc()

    # what the suite and scripts/gpu_check.sh run, by path as they run
    sys.path.insert(0, "benchmarks")
    load("gpu_suite", "benchmarks/gpu_suite.py")
    load("e2e_section", "benchmarks/e2e_section.py")
    load("check_ext", "csrc/check_ext.py")
    for name in ("triton.testing", "triton.language", "triton.compiler", "torch.utils.cpp_extension",
                 "transformers", "lcirc_fast"):
        load(name)
    # every module of the package (the suite's lazy imports among them); __main__ runs the CLI
    import lcirc_fast
    for m in pkgutil.walk_packages(lcirc_fast.__path__, "lcirc_fast."):
        if m.name != "lcirc_fast.__main__":
            load(m.name)
    loaded = sorted(n for n in sys.modules if n.partition(".")[0] in json.loads(sys.argv[1]))
    refused = {}
    for name in json.loads(sys.argv[2]):
        try:
            importlib.import_module(name)
            refused[name] = "imported"
        except ModuleNotFoundError as exc:
            refused[name] = exc.name
    print(json.dumps({"failed": failed, "loaded": loaded, "refused": refused,
                      "count": sum(1 for n in sys.modules if n.startswith("lcirc_fast"))}))
""")


def _needs_the_server_packages(module: str, trace: str) -> bool:
    """True for a module of lcirc_fast.serving that failed only for lack of a server package."""
    last = trace.strip().splitlines()[-1]
    return (module.split(".")[:2] == ["lcirc_fast", "serving"]
            and any(last == f"ModuleNotFoundError: No module named '{name}'" for name in SERVING_ONLY))


def test_every_module_of_the_suite_and_gpu_check_imports(stack_python):
    proc = _run(stack_python, ["-c", _IMPORTS, json.dumps(ABSENT), json.dumps(GPU_ABSENT)], 300,
                TRITON_INTERPRET="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = {k: v for k, v in res["failed"].items() if not _needs_the_server_packages(k, v)}
    assert not failed, "\n".join(f"{k}:\n{v}" for k, v in failed.items())
    assert res["count"] > 50, res["count"]
    # nothing imported deepspeed, datasets or matplotlib on the way, and importing them fails
    assert res["loaded"] == [], f"imported although absent on the GPU machine: {res['loaded']}"
    assert res["refused"] == {n: n for n in GPU_ABSENT}


def test_dry_run(stack_python):
    proc = _run(stack_python, ["benchmarks/gpu_suite.py", "--dry-run"], 120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("sections: env, correctness, "), proc.stdout


def test_cpu_smoke_without_matplotlib(stack_python, tmp_path):
    out = tmp_path / "gpu.json"
    proc = _run(stack_python, ["benchmarks/gpu_suite.py", "--cpu-smoke", "--out", str(out)], 600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert "Traceback" not in log, log[-5000:]
    res = json.loads(out.read_text())
    assert res["green"] is True
    env = next(r for r in res["rows"] if r["kind"] == "env")
    assert env["triton"] == _pins()["triton"] and env["torch"].startswith(_pins()["torch"])
    assert not [r for r in res["rows"] if r["kind"] == "error"]
    for sec in ("env", "correctness", "perceiver", "gca", "epilogue", "compress128k", "e2e"):
        assert any(r["section"] == sec for r in res["rows"]), f"section {sec} recorded nothing"
    assert (tmp_path / "e2e.json").exists() and not (tmp_path / "e2e.png").exists()
    missing = f"no {tmp_path / 'e2e.png'} (matplotlib is not installed)"
    meta = next(r for r in res["rows"] if r["kind"] == "e2e_meta")
    assert meta["plot"] == missing
    assert json.loads((tmp_path / "e2e.json").read_text())["plot"] == missing
    assert f"e2e plot: {missing}" in proc.stdout
    assert "correctness: GREEN" in proc.stdout
