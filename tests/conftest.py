"""Session fixtures: one tokenizer trained in-process and one tiny Llama directory for the whole run."""

from __future__ import annotations

import os

import pytest

from ray_cluster import cluster  # noqa: F401 (a module-scoped local Ray cluster, for the tests that ask for it)
from skip_report import NO_CUDA, pytest_runtest_makereport, pytest_terminal_summary  # noqa: F401 (hooks)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


CUDA = _cuda()
if not CUDA:  # on a GPU machine DeepSpeed keeps its CUDA accelerator, so GPU-marked tests test GPU paths
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.gpu` tests need CUDA: skipped, with the reason, where there is none."""
    if CUDA:
        return
    skip = pytest.mark.skip(reason=f"{NO_CUDA} (pytest -m gpu on a GPU machine; make gpu-check)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """An HF directory with a tiny random Llama (hidden 64, 2 layers) and its in-process BPE tokenizer."""
    from safeft.tiny import build_tiny_model_dir

    return build_tiny_model_dir(str(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def sharp_model_dir(tiny_model_dir, tmp_path_factory) -> str:
    """The tiny model briefly trained for large greedy margins (evaluator equality tests)."""
    from helpers import sharp_tiny_model_dir

    return sharp_tiny_model_dir(tiny_model_dir, str(tmp_path_factory.mktemp("sharp") / "model"))


@pytest.fixture(scope="session")
def real_tiny_model(tmp_path_factory):
    """`real_tiny_model(name, eos_token=None)`: the HF directory of a tiny random model of the real
    architecture of shared tokenizer `name` (llama2, llama3.1, qwen3), built once per session; skips
    with the reason when the shared tokenizer folder is absent."""
    from helpers import shared_tokenizer_or_skip
    from safeft.tiny import build_real_tiny_model_dir

    root = tmp_path_factory.mktemp("real")

    def build(name: str, eos_token=None) -> str:
        src = shared_tokenizer_or_skip(name)
        tag = name + ("" if eos_token is None else "-eos-" + "".join(c for c in eos_token if c.isalnum()))
        return build_real_tiny_model_dir(src, str(root / tag), eos_token=eos_token)

    return build


@pytest.fixture()
def shared_data_with_hexphi(tmp_path, monkeypatch):
    """SAFEFT_SHARED_DATA -> a folder holding the shared data as found (linked) plus HEx-PHI stand-ins, so the
    LookAhead configs pass `config check` as they would where HEx-PHI is present."""
    from helpers import write_hexphi_stand_in
    from safeft.data.shared import shared_data_dir

    root = tmp_path / "shared-data"
    root.mkdir()
    real = shared_data_dir()
    for child in sorted(os.listdir(real)) if real else []:
        os.symlink(os.path.join(real, child), root / child)
    write_hexphi_stand_in(root)
    monkeypatch.setenv("SAFEFT_SHARED_DATA", str(root))
    return root
