"""Install lcirc_fast: a pure-Python package everywhere, plus the optional CUDA extension.

The extension ``lcirc_fast._C`` (csrc/, built through CMakeLists.txt) is compiled only where
nvcc, cmake and a CUDA build of torch are present. ``LCIRC_BUILD_EXT=1`` forces it (a clear
error when impossible), ``LCIRC_BUILD_EXT=0`` skips it; the decision lives in
lcirc_fast/_build_config.py. ``LCIRC_CUDA_ARCHS`` (e.g. "90" or "80;90") overrides the CUDA
architectures. A CPU install compiles nothing and does not import torch.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _load_build_config():
    """Import lcirc_fast/_build_config.py by path (the package itself needs torch)."""
    name = "_lcirc_build_config"
    spec = importlib.util.spec_from_file_location(name, ROOT / "lcirc_fast" / "_build_config.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


class CMakeExtension(Extension):
    """An extension whose sources are built by CMake rather than by setuptools."""

    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Builds `CMakeExtension`s with cmake and copies the module where setuptools expects it."""

    def build_extension(self, ext):
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        decision = BUILD
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        out_dir = build_dir / "out"
        args = [
            f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_CUDA_COMPILER={decision.nvcc}",
            f"-DLCIRC_OUTPUT_DIR={out_dir}",
            "-DLCIRC_WITH_CUDA=ON",
            "-DLCIRC_WITH_TORCH=ON",
        ]
        archs = os.environ.get("LCIRC_CUDA_ARCHS")
        if archs:
            args.append(f"-DLCIRC_CUDA_ARCHS={archs}")
        if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
            args += ["-G", "Ninja"]
        jobs = str(self.parallel or os.cpu_count() or 1)
        cmake = decision.cmake or "cmake"
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        subprocess.run([cmake, "--build", str(build_dir), "--target", "_C", "-j", jobs], check=True)
        built = sorted(out_dir.glob("_C*.so")) + sorted(out_dir.glob("_C*.pyd"))
        if not built:
            raise RuntimeError(f"cmake finished but produced no _C module in {out_dir}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built[0], target)


BUILD = _load_build_config().decide_build()
print(f"lcirc_fast: CUDA extension {'will be built' if BUILD.build else 'not built'} "
      f"({BUILD.reason})", file=sys.stderr)

readme = ROOT / "README.md"

setup(
    name="lcirc_fast",
    version="0.1.0",
    description="LCIRC / QD-LCIRC: recurrent compression of long contexts injected into a frozen "
                "Llama through gated cross-attention, with fused kernels",
    long_description=readme.read_text(encoding="utf-8") if readme.exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lcirc_fast", "lcirc_fast.*"]),
    include_package_data=False,
    install_requires=[
        "torch>=2.4",
        "transformers>=4.45",
        "safetensors",
        "numpy",
        "tqdm",
        "pyyaml",
        "matplotlib",
    ],
    extras_require={
        "triton": ["triton>=3.1"],
        "train": ["datasets", "accelerate", "deepspeed"],
        "dev": ["pytest", "pytest-benchmark"],
    },
    entry_points={"console_scripts": ["lcirc = lcirc_fast.cli:main"]},
    ext_modules=[CMakeExtension("lcirc_fast._C")] if BUILD.build else [],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
