"""Build and install cvpods-dynamichead.

The C++ (and optionally CUDA) sources in ``csrc/`` become the extension ``cvpods._C``.
CUDA sources are compiled when ``FORCE_CUDA=1`` or when a CUDA device and nvcc are present;
``TORCH_CUDA_ARCH_LIST`` selects the architectures (default here: sm_80 and sm_90).

Install with the pinned torch already in the environment and without build isolation::

    pip install torch==2.14.1 torchvision==0.29.1
    pip install --no-build-isolation -e .
"""

import glob
import os
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def _locate_cuda_home() -> None:
    """Point CUDA_HOME at the real toolkit when ``nvcc`` on PATH is a wrapper script.

    torch guesses CUDA_HOME as the parent of the folder holding ``nvcc``; for a wrapper such as
    /usr/local/bin/nvcc that is /usr/local, which has no CUDA headers or libraries.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            os.environ["CUDA_HOME"] = home
            return


def get_extensions() -> list:
    """The ``cvpods._C`` extension: every .cpp under csrc/, plus every .cu when CUDA is wanted."""
    _locate_cuda_home()
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cpp_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    if not cpp_sources:
        return []
    extra_compile_args = {"cxx": ["-O3", "-fopenmp", "-std=c++20"]}
    extra_link_args = ["-fopenmp"]
    define_macros = []
    extension = CppExtension
    sources = cpp_sources
    if _want_cuda() and cuda_sources:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        extension = CUDAExtension
        sources = cpp_sources + cuda_sources
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-std=c++20"]
    return [
        extension(
            "cvpods._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


def _cmdclass() -> dict:
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    name="cvpods-dynamichead",
    version="0.1.0",
    description="Fine-Grained Dynamic Head (NeurIPS 2020) in a cvpods-style detection framework",
    python_requires=">=3.10",
    packages=find_packages(include=["cvpods", "cvpods.*"]),
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy",
        "opencv-python-headless",
        "pycocotools",
        "tensorboard",
        "tqdm",
        "tabulate",
    ],
    # matplotlib: tools/plot_results.py (its tests run in the dev install too).
    extras_require={"dev": ["pytest", "ruff", "matplotlib"], "plot": ["matplotlib"]},
    ext_modules=get_extensions(),
    cmdclass=_cmdclass(),
    entry_points={
        "console_scripts": [
            "cvpods_train=cvpods.engine.launcher:train_main",
            "cvpods_test=cvpods.engine.launcher:test_main",
        ]
    },
    zip_safe=False,
)
