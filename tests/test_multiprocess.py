"""Two processes over gloo on the CPU: `lavit extract` and `lavit train` under `accelerate launch` give what one
process gives: the same launches as on several GPUs, on CPUs with tiny models, so that CI needs no GPU.

Why `--multi_gpu` and not `--cpu`: `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate's simple
launcher; several CPU processes need mpirun and a hostfile), so nothing would be tested. `--multi_gpu` is torchrun's
launcher: on a machine with no GPU (`CUDA_VISIBLE_DEVICES=""` here) it starts two CPU processes, which join a gloo
process group (extraction: `PartialState(cpu=True)`; training: `--use_cpu true`). Every test checks that two
processes really ran, from what each wrote.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from datasets_scripts.extract import main as extract_main
from datasets_scripts.extract import make_parser as extract_parser
from datasets_scripts.writer import CHUNKS_DIR, shard_dir_name, shard_folder
from lavit_hf import schema
from lavit_hf.arguments import parse_with_config
from lavit_hf.testing_utils import synthetic_lavit_dataset
from trainer.train import main as train_main
from trainer.train import make_parser as train_parser


REPO_ROOT = Path(__file__).resolve().parents[1]
D = 48  # teacher width of the tiny student's V_top head
LOGGED = ("loss", "loss_ce", "loss_vtop", "loss_traj", "grad_norm")
# Set by a launcher around pytest, they would make the launched processes join the wrong group.
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def accelerate_launch(module: str, argv: list[str], tmp_path: Path, timeout: int = 240) -> str:
    """`accelerate launch` of `module` in 2 CPU processes; returns stdout + stderr (failing on a non-zero exit)."""
    executable = Path(sys.executable).parent / "accelerate"
    command = [
        str(executable) if executable.is_file() else shutil.which("accelerate"), "launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", "0",  # a free port: other test runs may launch at the same time
        "-m", module, *argv,
    ]
    env = {key: value for key, value in os.environ.items() if key not in DISTRIBUTED_ENV}
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1",
        # No accelerate default config of the user's, and a private datasets cache.
        HF_HOME=str(tmp_path / "hf_home"),
    )
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-5000:]
    return output


@contextlib.contextmanager
def one_thread():
    """The single-process reference with the launched processes' thread count (OMP_NUM_THREADS=1), so that CPU
    reductions run in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# Extraction: one shard per process, merged by the main process


@pytest.fixture(scope="module")
def source(module_tmp_dir) -> Path:
    """Six small generated images and a plain JSONL source (image, question, answer, question_id)."""
    root = module_tmp_dir("multiprocess_source")
    (root / "images").mkdir()
    generator = torch.Generator().manual_seed(0)
    lines = []
    for i, (w, h) in enumerate([(84, 84), (112, 56), (56, 112), (98, 70), (70, 98), (140, 84)]):
        pixels = torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(root / "images" / f"im{i}.png")
        lines.append(json.dumps({"image": f"im{i}.png", "question": f"What is in picture {i}?",
                                 "answer": "A square.", "question_id": f"q{i}"}))
    (root / "source.jsonl").write_text("\n".join(lines) + "\n")
    return root


def dataset_rows(folder: Path) -> list[dict]:
    ds = datasets.load_dataset(str(folder), split="train")
    return ds.cast_column(schema.IMAGE, datasets.Image(decode=False)).to_list()


def test_extract_two_processes_equal_one(source, tiny_teacher_dir, tmp_path):
    flags = ["--source", str(source / "source.jsonl"), "--image-root", str(source / "images"),
             "--teacher", str(tiny_teacher_dir), "--max-new-tokens", "4", "--generation-batch-size", "2",
             "--chunk-size", "2", "--methods", "attention", "gradient"]
    out = tmp_path / "two"
    log = accelerate_launch("datasets_scripts.extract", [*flags, "--output-dir", str(out)], tmp_path)

    # Two shards, one per process, each with its half of the source; merged once, by the main process.
    assert sorted(p.name for p in (out / CHUNKS_DIR).iterdir()) == [shard_dir_name(0, 2), shard_dir_name(1, 2)]
    for index in (0, 1):
        info = json.loads((shard_folder(out, index, 2) / "run.json").read_text())
        assert (info["num_shards"], info["shard_index"], info["shard_records"]) == (2, index, 3)
        assert f"Shard {index}/2: written 3," in log
    assert log.count("Dataset written to") == 1

    reference = tmp_path / "one"
    with one_thread():
        extract_main(parse_with_config(extract_parser(), [*flags, "--output-dir", str(reference)]))
    assert not shard_folder(reference, 0, 2).exists()
    two, one = dataset_rows(out), dataset_rows(reference)
    assert [row[schema.ID] for row in two] == [f"source/q{i}" for i in range(6)]
    assert two == one  # same rows, same order, same values
    for name in ("failures.jsonl", "filtered.jsonl"):
        assert (out / name).read_text() == (reference / name).read_text()
    manifests = [json.loads((folder / "manifest.json").read_text()) for folder in (out, reference)]
    assert manifests[0]["counts"] == manifests[1]["counts"] == {
        "records": 6, "written": 6, "failed": 0, "filtered": 0, "failure_reasons": {}
    }


# Training: DDP over gloo, stage 1 then stage 2


@pytest.fixture(scope="module")
def train_inputs(module_tmp_dir, tiny_lavit_pair) -> tuple[Path, Path]:
    """The tiny LaViT student saved with `save_pretrained`, and a two-row LaViT dataset on disk."""
    root = module_tmp_dir("multiprocess_train")
    tiny_lavit_pair[0].save_pretrained(root / "student")  # writes the attached processor too
    # Two rows, one per student grid (one resampled from the teacher's): every step's global batch is both rows.
    synthetic_lavit_dataset(2, D, teacher_grids=((2, 2), (3, 5))).to_parquet(
        root / "data" / "data" / "train-00000-of-00001.parquet"
    )
    return root / "student", root / "data"


def logged_steps(folder: Path) -> dict[int, dict]:
    state = json.loads((folder / "trainer_state.json").read_text())
    return {entry["step"]: entry for entry in state["log_history"] if "loss" in entry}


def test_train_two_processes_equal_one(train_inputs, tmp_path):
    """Per-device batch 1 on 2 processes against batch 2 on 1 process, gradient accumulation 1: the same global
    batch, so the same losses. CE is token-averaged over both processes (`average_tokens_across_devices`, on by
    default): each process divides its CE token sum by the global count and the trainer multiplies it by the number of
    processes, which DDP's gradient mean takes back; V_top and trajectory means are per-row, so their mean over the two
    processes is the batch mean. Plain SGD (no clipping, no decay) makes step 2 depend on step 1's gradient exactly,
    so the all-reduce is checked too. Stage 1 runs without CE in its loss, the recipe's activation checkpointing on
    (DDP then has no unused-parameter detection), and stage 2 loads stage 1's folder as written by the main process."""
    student, data = train_inputs
    flags = [
        "--model_name_or_path", str(student), "--dataset_name_or_path", str(data), "--stage_schedule", "two_stage",
        "--stage1_steps", "2", "--stage2_steps", "2", "--stage1_learning_rate", "0.1", "--stage2_learning_rate", "0.1",
        "--stage1_warmup_ratio", "0", "--stage2_warmup_ratio", "0", "--lr_scheduler_type", "constant",
        "--optim", "sgd", "--weight_decay", "0", "--max_grad_norm", "0", "--gradient_accumulation_steps", "1",
        "--ce_in_stage1", "false", "--min_pixels", "3136", "--max_pixels", "50176", "--logging_steps", "1",
        "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true",
        "--seed", "0", "--log_level", "info",
    ]
    two = tmp_path / "two"
    log = accelerate_launch("trainer.train", [*flags, "--output_dir", str(two), "--per_device_train_batch_size", "1"],
                            tmp_path)
    # Really two processes: per-device batch 1 but a global batch of 2, so each step is one epoch of the two rows
    # (one process alone would log epoch 0.5 at step 1).
    assert "Instantaneous batch size per device = 1" in log
    assert "Total train batch size (w. parallel, distributed & accumulation) = 2" in log

    one = tmp_path / "one"
    with one_thread():
        train_main(parse_with_config(train_parser(), [*flags, "--output_dir", str(one),
                                                      "--per_device_train_batch_size", "2"]))

    for stage in ("stage1", "stage2"):
        steps_two, steps_one = logged_steps(two / stage), logged_steps(one / stage)
        assert sorted(steps_two) == sorted(steps_one) == [1, 2], stage
        for step in (1, 2):
            assert steps_two[step]["epoch"] == steps_one[step]["epoch"] == float(step)
            for key in LOGGED:
                assert steps_two[step][key] == pytest.approx(steps_one[step][key], rel=1e-5), (stage, step, key)
        assert steps_two[2]["loss"] != steps_two[1]["loss"], stage  # the step moved the weights
    assert json.loads((two / "stage1" / "config.json").read_text())["training_stage"] == 1
    assert json.loads((two / "stage2" / "config.json").read_text())["training_stage"] == 2

    # The final weights: same update of every parameter.
    initial = load_file(student / "model.safetensors")
    final_two, final_one = (load_file(folder / "stage2" / "model.safetensors") for folder in (two, one))
    assert final_two.keys() == final_one.keys()
    moved = 0
    for name, value in final_one.items():
        torch.testing.assert_close(final_two[name] - initial[name], value - initial[name], rtol=1e-4, atol=1e-6,
                                   msg=name)
        moved += not torch.equal(value, initial[name])
    assert moved > 0
