"""Shared fixtures: tiny random models built offline, once per test session."""

import copy
import os
import shutil
from pathlib import Path

import pytest


# No network: every model, tokenizer and dataset in the tests is built or shipped locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models on a few shared cores (xdist runs one test process per core): one intra-op thread per process is several
# times faster than oversubscribed ones (a tiny student's forward: 0.05 s against 0.46 s with two threads under load).
# Set for the subprocesses too, whose results some tests compare bit for bit with in-process ones.
if "OMP_NUM_THREADS" not in os.environ:
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_SAMPLES = REPO_ROOT / "tests" / "fixtures" / "bench_samples"


@pytest.fixture(scope="session")
def tiny_students():
    """`get(family)`: a tiny random LaViT student of a student family (`lavit_hf.STUDENT_FAMILIES`) and its processor,
    built once per session on first use."""
    from lavit_hf import build_tiny_lavit

    cache, limits = {}, {}

    def get(family: str):
        if family not in cache:
            cache[family] = build_tiny_lavit(seed=0, family=family)
            limits[family] = copy.deepcopy(cache[family][1].image_processor.__dict__)
        return cache[family]

    def restore_pixel_limits():
        for family, (_, processor) in cache.items():
            processor.image_processor.__dict__.update(copy.deepcopy(limits[family]))

    get.restore_pixel_limits = restore_pixel_limits
    return get


@pytest.fixture(autouse=True)
def shared_students_keep_their_pixel_limits(tiny_students):
    """`LaViTTrainer` gives the processor it trains with the run's pixel limits (so that the saved processor resizes
    as the run did); the session's shared students get their own back after each test, whatever order tests run in."""
    yield
    tiny_students.restore_pixel_limits()


@pytest.fixture(scope="session")
def tiny_teachers():
    """`get(family)`: a tiny random model of any tiny family (`lavit_hf.tiny.TINY_FAMILIES`) and its processor, built
    once per session on first use."""
    from lavit_hf import build_tiny_base

    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = build_tiny_base(family, seed=1)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def tiny_lavit_pair(tiny_students):
    """A tiny random LaViT student (Qwen2.5-VL) and its processor; use `tiny_lavit` for a private copy."""
    return tiny_students("qwen2_5_vl")


@pytest.fixture
def tiny_lavit(tiny_lavit_pair):
    """A private deep copy of the tiny student (free to train or re-stage) and its processor (shared: copying its
    152k-token tokenizer costs seconds)."""
    model, processor = tiny_lavit_pair
    return copy.deepcopy(model, memo={id(processor): processor}), processor


@pytest.fixture(scope="session")
def tiny_teacher_pair(tiny_teachers):
    """A tiny random Qwen2.5-VL teacher and its processor."""
    return tiny_teachers("qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tiny_teacher_pair):
    """The tiny teacher saved with plain transformers, as `lavit make-tiny --kind teacher` writes it."""
    model, processor = tiny_teacher_pair
    out = tmp_path_factory.mktemp("tiny_teacher")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def module_tmp_dir(request, tmp_path_factory):
    """`make(name)`: a new folder for a test module's shared artifacts, removed when the module's tests are done
    unless one failed (each tiny model carries the real 151k-token vocabulary, 50-160 MB a checkpoint, so folders kept
    until the session ends would add up to gigabytes)."""
    failed_before = request.session.testsfailed
    made = []

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    if request.session.testsfailed == failed_before:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def bench_samples() -> Path:
    """`tests/fixtures/bench_samples`: real benchmark rows with their sources, licences and official figures
    (its README.md)."""
    return BENCH_SAMPLES
