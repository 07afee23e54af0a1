"""bitdet: Big Transfer (BiT) ResNet-v2 backbones, pretraining, transfer and Detectron2 detection.

Detectron2 has no PyPI release, so it is not listed here: ``tools/install_detectron2.py``
(run by ``make setup``) keeps an importable one or installs the pure-Python registry route.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = {}
exec((ROOT / "bitdet" / "version.py").read_text(), version)

setup(
    name="bitdet",
    version=version["__version__"],
    description=(
        "Big Transfer (BiT) ResNet-v2 backbones for classification transfer and "
        "Detectron2 detection"
    ),
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["bitdet", "bitdet.*"]),
    # bitdet/configs links to the repository's configs/: the wheel carries the files themselves
    package_data={
        "bitdet": ["configs/*.yaml", "configs/**/*.yaml", "configs/*.py", "configs/**/*.py"]
    },  # .py: LazyConfigs
    entry_points={
        "console_scripts": [
            f"bitdet-{name}=bitdet.tools.{module}:cli"
            for name, module in (
                ("train", "train_net"),
                ("pretrain", "pretrain"),
                ("finetune", "finetune"),
                ("vtab", "vtab"),
                ("benchmark", "benchmark"),
                ("visualize", "visualize"),
                ("demo", "demo"),
                ("convert", "convert_weights"),
                ("write-shards", "write_shards"),
                ("generate-detection-data", "generate_detection_data"),
                ("export", "export_model"),
            )
        ]
    },
    install_requires=[
        "torch>=2.4",  # torch.get_autocast_dtype, torch.is_autocast_enabled(device_type)
        "torchvision>=0.19",  # the torchvision release paired with torch 2.4
        "numpy>=1.22",
        "fvcore>=0.1.5",
        "iopath>=0.1.7",
        "pycocotools>=2.0.6",
        # headless: the same cv2 without the GUI libraries that servers lack
        "opencv-python-headless>=4.6",
        "Pillow>=9.1",
        "PyYAML>=5.4",
        "yacs>=0.1.8",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "tensorboard>=2.10",
        "webdataset>=0.2.86",
        # one download or generation per machine while the other processes wait
        "filelock>=3.0",
        # weights from where users have them: safetensors files, hf-hub: ids
        # (the hub client's cache)
        "safetensors>=0.4",
        "huggingface_hub>=0.24",
        # real data that installs offline: digits (scikit-learn), photos (scikit-image)
        "scikit-learn>=1.1",
        "scikit-image>=0.19",
        # t-intervals of the demo's comparisons (bitdet.demo.stats)
        "scipy>=1.7",
    ],
    extras_require={
        # tools/export_model.py: ONNX files (onnx), checked and timed in ONNX Runtime on the CPU
        "export": ["onnx>=1.15", "onnxruntime>=1.17"],
        # timm and transformers: the weights-format tests build their models as sources; onnx and
        # onnxruntime: the export tests
        "dev": [
            "pytest>=7",
            "pytest-timeout>=2.1",
            # the lint gate of .ci/run (ruff.toml); pinned so its formatting does not drift
            "ruff==0.17.6",
            "timm>=0.9",
            "transformers>=4.30",
            "onnx>=1.15",
            "onnxruntime>=1.17",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
