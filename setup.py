"""Installs the repository root as the package ``one_peace``.

Nothing is installed under generic top-level names (``models``, ``tasks`` ...):
each top-level source folder becomes a sub-package of ``one_peace``.
"""
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIRS = ["models", "data_utils", "metrics", "hub", "fairseq_glue", "tasks", "criterions", "optim", "user_src",
               "search", "mteb_eval"]


def find_subpackages():
    packages, package_dir = ["one_peace"], {"one_peace": "."}
    for top in SOURCE_DIRS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            if "__init__.py" not in filenames:
                continue
            rel = os.path.relpath(dirpath, ROOT)
            name = "one_peace." + rel.replace(os.sep, ".")
            packages.append(name)
            package_dir[name] = rel
    return packages, package_dir


packages, package_dir = find_subpackages()
ONNX_EXTRAS = ["onnx", "onnxruntime"]  # one-peace-export, one-peace-index --backend onnx
MTEB_EXTRAS = ["mteb==2.26.24"]  # the MTEB wrapper (mteb_eval/); its core imports beside the CPU torch
# Hydra scans the hydra_plugins namespace when fairseq-hydra-train starts (optim/common_config.py).
packages.append("hydra_plugins.one_peace")
package_dir["hydra_plugins.one_peace"] = "hydra_plugins/one_peace"

setup(
    name="one-peace",
    version="0.1.0",
    description="ONE-PEACE (vision/audio/language representation model) as a fairseq user-dir plugin",
    packages=packages,
    package_dir=package_dir,
    package_data={"one_peace.models.kernels": ["cpu_fused.c"]},  # built on first use (models/kernels/cpu_build.py)
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "ve-fairseq==0.12.3",
        "numpy",
        "regex",
        "soundfile",
        "scipy",
        "Pillow",
        "tensorboardX",
        "omegaconf",
        "kornia>=0.7",
        "av",  # PyAV: video decoding (data_utils/video.py)
        "faiss-cpu",  # search/: vector indexes
        "starlette",  # search/server.py (one-peace-serve)
        "uvicorn",
        "python-multipart",  # file uploads to one-peace-serve
        "safetensors",  # pickle-free model directories (hub/pretrained_dir.py)
        "huggingface_hub",  # from_pretrained("org/name") through the Hub and its cache
        "webdataset",  # tar shards as training data
        'triton; platform_system == "Linux" and platform_machine == "x86_64"',
    ],
    extras_require={
        "onnx": ONNX_EXTRAS,
        "mteb": MTEB_EXTRAS,
        "dev": ["pytest", "scikit-learn", "ruff", "import-linter", "httpx", "playwright"] + ONNX_EXTRAS + MTEB_EXTRAS,
    },
    entry_points={
        "console_scripts": [
            "one-peace-evaluate=one_peace.evaluate:cli_main",
            "one-peace-hydra-train=one_peace.fairseq_glue.hydra_train:main",
            "one-peace-index=one_peace.search.indexer:cli_main",
            "one-peace-search=one_peace.search.query:cli_main",
            "one-peace-serve=one_peace.search.server:cli_main",
            "one-peace-convert=one_peace.hub.convert:cli_main",
            "one-peace-export=one_peace.hub.onnx_export:cli_main",
            "one-peace-mteb=one_peace.mteb_eval.run:cli_main",
        ]
    },
)
