"""Shared fixtures: tiny random models built offline, once per test session."""

import copy
import os
from pathlib import Path

import pytest


# No network: every model, tokenizer and dataset in the tests is built or shipped locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_SAMPLES = REPO_ROOT / "tests" / "fixtures" / "bench_samples"


@pytest.fixture(scope="session")
def tiny_lavit_pair():
    """A tiny random LaViT student and its processor; use `tiny_lavit` for a private copy."""
    from lavit_hf import build_tiny_lavit

    return build_tiny_lavit(seed=0)


@pytest.fixture
def tiny_lavit(tiny_lavit_pair):
    """A private deep copy of the tiny student (free to train or re-stage) and its processor."""
    model, processor = tiny_lavit_pair
    return copy.deepcopy(model), processor


@pytest.fixture(scope="session")
def tiny_teacher_pair():
    """A tiny random Qwen2.5-VL teacher and its processor."""
    from lavit_hf import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(seed=1)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tiny_teacher_pair):
    """The tiny teacher saved with plain transformers, as `lavit make-tiny --kind teacher` writes it."""
    model, processor = tiny_teacher_pair
    out = tmp_path_factory.mktemp("tiny_teacher")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bench_samples() -> Path:
    """`tests/fixtures/bench_samples`: real benchmark rows with their sources, licences and official figures
    (its README.md)."""
    return BENCH_SAMPLES
