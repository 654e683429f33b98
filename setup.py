"""Builds sltrain_ext._C: CPU kernels always, CUDA kernels when a CUDA toolkit
and a CUDA build of torch are present (SLTRAIN_FORCE_CPU=1 forces CPU-only)."""

import glob
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent.resolve()

# torch.utils.cpp_extension reads CUDA_HOME once, at import.
if "CUDA_HOME" not in os.environ and Path("/usr/local/cuda/bin/nvcc").exists():
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def want_cuda() -> bool:
    if os.environ.get("SLTRAIN_FORCE_CPU", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def nvidia_wheel_includes() -> list[str]:
    """Headers (cuBLAS, cuSPARSE, ...) that CUDA builds of torch install as wheels."""
    found = []
    for site in sys.path:
        found += glob.glob(os.path.join(site, "nvidia", "*", "include"))
    return sorted(set(found))


def sources(pattern: str) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern))


def extension():
    cxx_flags = ["-O3", "-fno-math-errno", "-fopenmp", "-DSLTRAIN_ATEN_PARALLEL"]
    cpp_sources = sources("csrc/*.cpp") + sources("csrc/cpu/**/*.cpp")
    if not want_cuda():
        return CppExtension(
            "sltrain_ext._C", cpp_sources,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"],
        )
    if not torch.cuda.is_available():
        # No GPU to query: build for Hopper, the target of the CUDA kernels.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    return CUDAExtension(
        "sltrain_ext._C", cpp_sources + sources("csrc/cuda/*.cu"),
        include_dirs=nvidia_wheel_includes(),
        extra_compile_args={
            "cxx": cxx_flags + ["-DSLTRAIN_WITH_CUDA"],
            # -Xptxas=-v prints every kernel's registers, shared memory and
            # spills into the build log (the hot kernels have none).
            "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-Xptxas=-v"],
        },
        extra_link_args=["-fopenmp"],
    )


setup(
    name="sltrain_ext",
    version="0.2.0",
    description="Fast, memory-lean SLTrain (sparse + low-rank pretraining) kernels for PyTorch",
    packages=find_packages(include=["sltrain_ext", "sltrain_ext.*"]),
    package_data={"sltrain_ext": ["configs/*.json", "recipes/*.json"]},
    python_requires=">=3.10",
    # The floor is the oldest torch the suite runs on: 2.11, the GPU machine's
    # (benchmarks/check_torch211.sh); CI runs 2.14.1.
    install_requires=["torch>=2.11", "numpy", "tqdm", "safetensors", "matplotlib", "tokenizers"],
    extras_require={"test": ["pytest", "expecttest", "hypothesis", "transformers", "sentencepiece", "pyarrow"],
                    "tracking": ["tensorboard", "wandb"]},  # sltrain-train --tracker
    entry_points={"console_scripts": ["sltrain-train = sltrain_ext.train:cli",
                                     "sltrain-prepare = sltrain_ext.prepare:cli",
                                     "sltrain-compare = sltrain_ext.compare:cli",
                                     "sltrain-export = sltrain_ext.export:cli",
                                     "sltrain-torchrun = sltrain_ext.launch:cli"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)
