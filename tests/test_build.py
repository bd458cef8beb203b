"""Packaging: the CUDA-extension build decision, `pip install -e .`, and CMake's torch check."""
from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lcirc_fast import _build_config as bc
from lcirc_fast import _ext

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ("*.so", "*.o", "*.a", "*.pyd", "*.ptx", "*.cubin", "*.fatbin")

CUDA_TORCH = bc.TorchInfo(installed=True, version="2.11.0+cu130", cuda="13.0", package_dir="/x")
CPU_TORCH = bc.TorchInfo(installed=True, version="2.13.0+cpu", cuda=None, package_dir="/x")


def _decide(value=None, nvcc="/opt/cuda/bin/nvcc", torch_info=CUDA_TORCH, cmake="/usr/bin/cmake"):
    env = {} if value is None else {bc.ENV_VAR: value}
    return bc.decide_build(env, nvcc_finder=lambda e: nvcc, torch_probe=lambda: torch_info,
                           cmake_finder=lambda e: cmake)


def _compiled_files(root: Path) -> list[Path]:
    return [p for pat in COMPILED for p in root.rglob(pat)]


# ---- the decision function -----------------------------------------------------------------

def test_this_machine_skips_the_build():
    d = bc.decide_build({"PATH": os.environ.get("PATH", "")})
    assert d.mode == "auto"
    if d.nvcc is not None:
        assert d.torch_cuda == torch.version.cuda
    if torch.version.cuda is None:
        assert not d.build
        assert ("CPU build" in d.reason) or ("nvcc" in d.reason)


def test_probe_reads_torch_version_without_importing_torch():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('bc', {str(ROOT / 'lcirc_fast' / '_build_config.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['bc'] = m; spec.loader.exec_module(m)\n"
        "info = m.probe_torch()\n"
        "print(info.version, info.cuda, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    version, cuda, imported = out.stdout.split()
    assert version == torch.__version__
    assert cuda == str(torch.version.cuda)
    assert imported == "False"


def test_auto_builds_only_with_nvcc_cmake_and_cuda_torch():
    d = _decide()
    assert d.build and d.mode == "auto" and d.nvcc == "/opt/cuda/bin/nvcc" and d.torch_cuda == "13.0"
    assert not _decide(torch_info=CPU_TORCH).build
    assert not _decide(cmake=None).build
    assert not _decide(torch_info=bc.TorchInfo(installed=False)).build
    for v in ("", "auto", " AUTO "):
        assert _decide(v).build


def test_auto_without_nvcc_skips_and_never_probes_torch():
    def boom():
        raise AssertionError("torch must not be probed when nvcc is missing")

    d = bc.decide_build({}, nvcc_finder=lambda e: None, torch_probe=boom,
                        cmake_finder=lambda e: "/usr/bin/cmake")
    assert not d.build and "nvcc" in d.reason


@pytest.mark.parametrize("value", ["0", "false", "off", "No"])
def test_zero_skips_even_when_everything_is_present(value):
    d = _decide(value)
    assert not d.build and d.mode == "skip" and bc.ENV_VAR in d.reason


@pytest.mark.parametrize("value", ["1", "true", "ON"])
def test_one_forces_the_build(value):
    d = _decide(value)
    assert d.build and d.mode == "force"


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(torch_info=CPU_TORCH), "CPU build"),
        (dict(nvcc=None), "nvcc"),
        (dict(cmake=None), "cmake"),
        (dict(torch_info=bc.TorchInfo(installed=False)), "no-build-isolation"),
    ],
)
def test_one_raises_a_clear_error_when_impossible(kwargs, needle):
    with pytest.raises(bc.ExtensionBuildError, match=needle) as info:
        _decide("1", **kwargs)
    assert bc.ENV_VAR in str(info.value)


def test_one_on_this_cpu_torch_raises():
    if torch.version.cuda is not None:
        pytest.skip("this check is about a CPU build of torch")
    env = {"PATH": os.environ.get("PATH", ""), bc.ENV_VAR: "1"}
    with pytest.raises(bc.ExtensionBuildError, match="CPU build"):
        bc.decide_build(env)


def test_unknown_value_is_rejected():
    with pytest.raises(ValueError, match="LCIRC_BUILD_EXT='maybe'"):
        _decide("maybe")


def test_find_nvcc_prefers_cuda_home(tmp_path):
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IXUSR)
    assert bc.find_nvcc({"CUDA_HOME": str(tmp_path), "PATH": ""}) == str(nvcc)
    empty = tmp_path / "empty"
    empty.mkdir()
    found = bc.find_nvcc({"PATH": str(empty)})
    assert found in (None, "/usr/local/cuda/bin/nvcc")


# ---- the loader ------------------------------------------------------------------------------

def test_extension_loader_reports_why_it_is_unavailable(monkeypatch):
    _ext._probe.cache_clear()
    try:
        if torch.version.cuda is None:
            assert _ext.load_extension() is None
            assert not _ext.extension_available()
            assert "CPU build" in _ext.extension_unavailable_reason()
        # Pretend torch is a CUDA build: without a built _C the reason names the missing module.
        if importlib.util.find_spec("lcirc_fast._C") is None:
            _ext._probe.cache_clear()
            monkeypatch.setattr(torch.version, "cuda", "13.0")
            assert _ext.load_extension() is None
            assert "not built" in _ext.extension_unavailable_reason()
            assert "LCIRC_BUILD_EXT=1" in _ext.extension_unavailable_reason()
    finally:
        _ext._probe.cache_clear()


# ---- setup.py and pip --------------------------------------------------------------------------

def _copy_project(dst: Path) -> Path:
    """The files pip needs, without caches or previously built modules."""
    src = dst / "src"
    src.mkdir()
    for f in ("setup.py", "CMakeLists.txt"):
        shutil.copy2(ROOT / f, src / f)
    ignore = shutil.ignore_patterns("__pycache__", *COMPILED)
    shutil.copytree(ROOT / "csrc", src / "csrc", ignore=ignore)
    shutil.copytree(ROOT / "lcirc_fast", src / "lcirc_fast", ignore=ignore)
    return src


def test_setup_py_with_forced_build_fails_clearly_on_cpu(tmp_path):
    if torch.version.cuda is not None:
        pytest.skip("this check is about a CPU build of torch")
    src = _copy_project(tmp_path)
    env = dict(os.environ, **{bc.ENV_VAR: "1"})
    r = subprocess.run([sys.executable, "setup.py", "--version"], cwd=src, env=env,
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "ExtensionBuildError" in r.stderr and "CPU build" in r.stderr


def _see_this_environment(venv: Path) -> None:
    """Put this environment's site-packages (pip, setuptools, torch as the project installed them)
    on the throwaway venv's path, so the install uses what scripts/setup.sh provides and nothing
    that only the base interpreter has."""
    import site
    import sysconfig

    purelib = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    dirs = dict.fromkeys([sysconfig.get_paths()["purelib"], *site.getsitepackages()])
    Path(purelib, "_outer_environment.pth").write_text("".join(f"{d}\n" for d in dirs))


def test_editable_install_compiles_nothing(tmp_path):
    """`pip install --no-deps -e .` into a throwaway venv: no compiled file, the `lcirc` script."""
    if torch.version.cuda is not None:
        pytest.skip("on a CUDA machine the editable install may legitimately build _C")
    src = _copy_project(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    _see_this_environment(venv)
    r = subprocess.run([str(py), "-m", "pip", "install", "-v", "--no-deps", "--no-build-isolation",
                        "--no-index", "-e", str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "CUDA extension not built" in r.stdout + r.stderr
    assert _compiled_files(src) == []
    assert not (src / "build").exists()
    assert (venv / "bin" / "lcirc").exists()
    origin = subprocess.run(
        [str(py), "-c", "import importlib.util as u; print(u.find_spec('lcirc_fast').origin)"],
        capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    assert Path(origin).resolve() == (src / "lcirc_fast" / "__init__.py").resolve()


def test_checkout_holds_no_compiled_extension_on_cpu():
    if torch.version.cuda is not None:
        pytest.skip("a CUDA machine may hold a built lcirc_fast._C")
    assert _compiled_files(ROOT / "lcirc_fast") == []
    assert _compiled_files(ROOT / "csrc") == []


# ---- CMake -------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_refuses_a_cpu_torch_clearly(tmp_path):
    if torch.version.cuda is not None:
        pytest.skip("this check is about a CPU build of torch")
    r = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "b"),
                        f"-DPython_EXECUTABLE={sys.executable}"], capture_output=True, text=True)
    assert r.returncode != 0
    assert "is a CPU build" in r.stderr and "LCIRC_WITH_TORCH=OFF" in r.stderr.replace("\n  ", " ")
