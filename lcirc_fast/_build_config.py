"""Whether ``setup.py`` builds the optional CUDA extension ``lcirc_fast._C``.

This module imports nothing outside the standard library (``setup.py`` loads it by file path,
before any dependency is guaranteed to be installed) and never imports torch: the torch build is
read from ``torch/version.py`` alone.

Environment variable ``LCIRC_BUILD_EXT``:

* unset / empty / ``auto`` - build only when ``nvcc`` and ``cmake`` are found **and** the installed
  torch is a CUDA build; otherwise skip (a CPU install compiles nothing);
* ``1`` (also ``true``, ``yes``, ``on``) - build; raise `ExtensionBuildError` when impossible;
* ``0`` (also ``false``, ``no``, ``off``) - never build.
"""
from __future__ import annotations

import importlib.util
import os
import runpy
import shutil
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

ENV_VAR = "LCIRC_BUILD_EXT"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_AUTO = {"", "auto"}


class ExtensionBuildError(RuntimeError):
    """LCIRC_BUILD_EXT=1 was set but the CUDA extension cannot be built here."""


@dataclass(frozen=True)
class BuildDecision:
    """Outcome of `decide_build`.

    build: compile ``lcirc_fast._C``; mode: "auto" | "force" | "skip"; reason: why, in words;
    nvcc / cmake: paths of the tools found (or None); torch_cuda: ``torch.version.cuda`` (or None).
    """

    build: bool
    mode: str
    reason: str
    nvcc: Optional[str] = None
    torch_cuda: Optional[str] = None
    cmake: Optional[str] = None


def parse_mode(value: Optional[str]) -> str:
    """Map the raw LCIRC_BUILD_EXT value to "auto", "force" or "skip"; reject anything else."""
    v = (value or "").strip().lower()
    if v in _AUTO:
        return "auto"
    if v in _TRUE:
        return "force"
    if v in _FALSE:
        return "skip"
    raise ValueError(
        f"{ENV_VAR}={value!r} is not understood: use 1 (build), 0 (skip) or leave it unset (auto)"
    )


def find_nvcc(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Path of nvcc: $CUDA_HOME/bin, $CUDA_PATH/bin, then PATH, then /usr/local/cuda/bin."""
    env = os.environ if env is None else env
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = env.get(var)
        if root:
            cand = os.path.join(root, "bin", "nvcc")
            if os.path.isfile(cand) and os.access(cand, os.X_OK):
                return cand
    found = shutil.which("nvcc", path=env.get("PATH"))
    if found:
        return found
    cand = "/usr/local/cuda/bin/nvcc"
    if os.path.isfile(cand) and os.access(cand, os.X_OK):
        return cand
    return None


def find_cmake(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Path of cmake on PATH, or None."""
    env = os.environ if env is None else env
    return shutil.which("cmake", path=env.get("PATH"))


@dataclass(frozen=True)
class TorchInfo:
    """What the build needs to know about torch, read without importing it."""

    installed: bool
    version: Optional[str] = None
    cuda: Optional[str] = None
    package_dir: Optional[str] = None


def probe_torch() -> TorchInfo:
    """Find torch's install and read ``torch/version.py`` (no ``import torch``)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return TorchInfo(installed=False)
    pkg = list(spec.submodule_search_locations)[0]
    vfile = os.path.join(pkg, "version.py")
    try:
        ns = runpy.run_path(vfile)
    except Exception:  # a broken or unusual torch install: treat as unusable for the build
        return TorchInfo(installed=False, package_dir=pkg)
    return TorchInfo(installed=True, version=ns.get("__version__"), cuda=ns.get("cuda"), package_dir=pkg)


def decide_build(
    env: Optional[Mapping[str, str]] = None,
    nvcc_finder: Callable[[Mapping[str, str]], Optional[str]] = find_nvcc,
    torch_probe: Callable[[], TorchInfo] = probe_torch,
    cmake_finder: Callable[[Mapping[str, str]], Optional[str]] = find_cmake,
) -> BuildDecision:
    """Decide whether to build the CUDA extension.

    Raises ValueError for an unknown LCIRC_BUILD_EXT value and `ExtensionBuildError` when the
    build is forced (LCIRC_BUILD_EXT=1) but nvcc, cmake or a CUDA build of torch is missing.
    """
    env = os.environ if env is None else env
    mode = parse_mode(env.get(ENV_VAR))
    if mode == "skip":
        return BuildDecision(False, mode, f"{ENV_VAR}=0: extension build disabled")

    nvcc = nvcc_finder(env)
    problems = []
    torch_cuda = None
    cmake = None
    if nvcc is None:
        problems.append("no CUDA compiler (nvcc) found in $CUDA_HOME/bin, $CUDA_PATH/bin or PATH")
    if nvcc is not None or mode == "force":
        info = torch_probe()
        torch_cuda = info.cuda
        if not info.installed:
            problems.append("torch is not installed in the build environment "
                            "(pip isolates builds: use `pip install --no-build-isolation`)")
        elif info.cuda is None:
            problems.append(f"torch {info.version} is a CPU build (torch.version.cuda is None)")
        cmake = cmake_finder(env)
        if cmake is None:
            problems.append("cmake not found on PATH (pip install cmake)")

    if not problems:
        return BuildDecision(True, mode, f"nvcc at {nvcc} and torch built for CUDA {torch_cuda}",
                             nvcc, torch_cuda, cmake)
    reason = "; ".join(problems)
    if mode == "force":
        raise ExtensionBuildError(
            f"{ENV_VAR}=1 asks for the CUDA extension but it cannot be built: {reason}. "
            f"Install a CUDA toolkit, cmake and a CUDA build of torch, or unset {ENV_VAR}."
        )
    return BuildDecision(False, mode, f"skipped: {reason}", nvcc, torch_cuda, cmake)
