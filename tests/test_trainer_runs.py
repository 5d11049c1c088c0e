"""`lavit train` runs end to end on a tiny student (CPU): which steps and learning rate each schedule really uses,
reruns and resumes that never train a finished stage again, torn checkpoints, bf16 weights that keep every update,
and data whose `vtop` width is not fixed by its features."""

import json
import logging
import shutil
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from safetensors.torch import load_file

from lavit_hf import schema
from lavit_hf.arguments import parse_with_config
from lavit_hf.testing_utils import synthetic_lavit_dataset, synthetic_lavit_rows
from trainer import LaViTTrainer, LaViTTrainingArguments
from trainer.train import last_complete_checkpoint, main, make_parser


D = 48
SMALL = ((56, 56),)  # one 2x2 student grid: the cheapest image


@pytest.fixture(scope="module")
def student_dir(module_tmp_dir, tiny_lavit_pair):
    folder = module_tmp_dir("student")
    tiny_lavit_pair[0].save_pretrained(folder)  # writes the attached processor too
    return folder


@pytest.fixture(scope="module")
def dataset_dir(module_tmp_dir):
    folder = module_tmp_dir("data")
    rows = synthetic_lavit_dataset(4, D, image_sizes=SMALL, teacher_grids=((2, 2),))
    rows.to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    return folder


def _train(tmp_path: Path, data: Path, model: Path, out: Path, *flags: str) -> None:
    """`lavit train` through its public entry point, with fast tiny settings from a YAML file."""
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "dataset_name_or_path": str(data), "min_pixels": 3136, "max_pixels": 3136, "activation_checkpointing": False,
        "gradient_accumulation_steps": 1, "per_device_train_batch_size": 2, "logging_steps": 1, "report_to": "none",
        "disable_tqdm": True, "use_cpu": True, "save_strategy": "no", "seed": 0,
    }))
    main(parse_with_config(make_parser(), [
        "--config", str(config), "--model_name_or_path", str(model), "--output_dir", str(out), *flags,
    ]))


def _state(folder: Path) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())


def _learning_rates(folder: Path) -> list[float]:
    return [entry["learning_rate"] for entry in _state(folder)["log_history"] if "loss" in entry]


# Which settings each schedule reads


def test_each_schedule_uses_its_own_steps_and_learning_rate(tmp_path, dataset_dir, student_dir):
    """`single` reads max_steps / learning_rate / warmup_steps; `stage1` and `stage2` alone read their stage's fields
    (not the plain ones), as each stage of `two_stage` does, so that a stage trains alike alone or in a schedule."""
    constant = ("--lr_scheduler_type", "constant_with_warmup")
    runs = {
        "single": ("--max_steps", "2", "--learning_rate", "1e-3", "--warmup_steps", "0"),
        "stage1": ("--stage1_steps", "3", "--stage1_learning_rate", "2e-3", "--stage1_warmup_ratio", "0"),
        "stage2": ("--stage2_steps", "1", "--stage2_learning_rate", "4e-4", "--stage2_warmup_ratio", "0"),
    }
    for schedule, flags in runs.items():
        out = tmp_path / schedule
        _train(tmp_path, dataset_dir, student_dir, out, "--stage_schedule", schedule, *flags, *constant)
    assert _state(tmp_path / "single")["global_step"] == 2 and _learning_rates(tmp_path / "single") == [1e-3] * 2
    assert _state(tmp_path / "stage1")["global_step"] == 3 and _learning_rates(tmp_path / "stage1") == [2e-3] * 3
    assert _state(tmp_path / "stage2")["global_step"] == 1 and _learning_rates(tmp_path / "stage2") == [4e-4]
    assert json.loads((tmp_path / "stage1" / "config.json").read_text())["training_stage"] == 1


@pytest.mark.parametrize(
    ("schedule", "flags", "named"),
    [
        ("stage1", {"max_steps": 200, "learning_rate": 2e-3}, ["max_steps=200", "learning_rate=0.002"]),
        ("stage2", {"stage1_steps": 10}, ["stage1_steps=10"]),
        ("single", {"stage1_steps": 200, "stage2_learning_rate": 1e-5}, ["stage1_steps=200", "stage2_learning_rate"]),
        ("two_stage", {"learning_rate": 1e-4, "num_train_epochs": 2.0}, ["learning_rate=0.0001", "num_train_epochs"]),
    ],
)
def test_settings_a_schedule_would_ignore_are_refused_by_name(tmp_path, schedule, flags, named):
    with pytest.raises(ValueError, match=f"stage_schedule='{schedule}'") as error:
        LaViTTrainingArguments(output_dir=str(tmp_path), stage_schedule=schedule, **flags)
    assert all(name in str(error.value) for name in named), str(error.value)


# Reruns, resumes and torn checkpoints


def _digest(folder: Path) -> dict[str, float]:
    return {name: float(value.double().sum()) for name, value in load_file(folder / "model.safetensors").items()}


def test_finished_stages_are_never_trained_again(tmp_path, dataset_dir, student_dir, caplog):
    """A two-stage run killed in stage 2 before its first checkpoint resumes with stage 2 only (stage 1 keeps its
    step count and weights); rerunning the finished run trains nothing and says so."""
    out = tmp_path / "out"
    flags = ("--stage_schedule", "two_stage", "--stage1_steps", "2", "--stage2_steps", "2",
             "--stage1_learning_rate", "1e-3", "--stage2_learning_rate", "1e-3", "--save_strategy", "steps",
             "--save_steps", "1")  # fmt: skip
    _train(tmp_path, dataset_dir, student_dir, out, *flags)
    stage1, stage2 = _digest(out / "stage1"), _digest(out / "stage2")
    assert _state(out / "stage1")["global_step"] == 2 and _state(out / "stage2")["global_step"] == 2

    # Rerun of the finished run: nothing is trained or written.
    mtime = (out / "stage2" / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="trainer.train"):
        _train(tmp_path, dataset_dir, student_dir, out, *flags, "--resume_from_checkpoint", "true")
    assert "nothing to train" in caplog.text
    assert (out / "stage2" / "model.safetensors").stat().st_mtime_ns == mtime

    # Killed in stage 2 before its first checkpoint: its folder holds no finished model and no checkpoint yet (while
    # stage 1's checkpoints are there to be picked by mistake).
    for name in ("trainer_state.json", "model.safetensors", "README.md"):
        (out / "stage2" / name).unlink()
    for checkpoint in (out / "stage2").glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trainer.train"):
        _train(tmp_path, dataset_dir, student_dir, out, *flags, "--resume_from_checkpoint", "true")
    assert "Stage 1 finished already" in caplog.text
    assert _state(out / "stage1")["global_step"] == 2 and _digest(out / "stage1") == stage1
    assert _state(out / "stage2")["global_step"] == 2
    assert _digest(out / "stage2") == pytest.approx(stage2, rel=1e-6)  # the same stage 2 as the first time


def test_torn_checkpoint_is_skipped_and_true_is_not_a_model_id(tmp_path, dataset_dir, student_dir):
    out = tmp_path / "out"
    flags = ("--max_steps", "3", "--learning_rate", "1e-3", "--lr_scheduler_type", "constant", "--warmup_steps", "0",
             "--save_strategy", "steps", "--save_steps", "1")  # fmt: skip
    # A single-stage run resumed with `true` before any checkpoint exists starts from the beginning (offline: a
    # lookup of "true" as a model id would fail here).
    _train(tmp_path, dataset_dir, student_dir, out, *flags, "--resume_from_checkpoint", "true")
    full = {entry["step"]: entry["loss"] for entry in _state(out)["log_history"] if "loss" in entry}
    # Unfinish the run, and tear its last checkpoint as a kill while saving does (weights half written, no state).
    (out / "trainer_state.json").unlink()
    torn = out / "checkpoint-3"
    (torn / "trainer_state.json").unlink()
    (torn / "model.safetensors").write_bytes(b"\0" * 100)
    assert last_complete_checkpoint(out) == str(out / "checkpoint-2")
    _train(tmp_path, dataset_dir, student_dir, out, *flags, "--resume_from_checkpoint", "true")
    resumed = {entry["step"]: entry["loss"] for entry in _state(out)["log_history"] if "loss" in entry}
    assert _state(out)["global_step"] == 3
    assert resumed[3] == pytest.approx(full[3], rel=1e-5)
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        (torn / "trainer_state.json").unlink(missing_ok=True)
        (out / "trainer_state.json").unlink()
        _train(tmp_path, dataset_dir, student_dir, out, *flags, "--resume_from_checkpoint", str(torn))


# bf16 weights keep every update


def _update(initial: dict, final: dict, dtype: torch.dtype) -> torch.Tensor:
    """The update of the weights that train densely (decoder layers and heads: the embedding and LM head rows of
    tokens absent from the batch get no gradient in any run), as one float64 vector."""
    keys = [key for key in initial if not any(part in key for part in ("embed_tokens", "lm_head", "visual"))]
    return torch.cat([(final[key].double() - initial[key].to(dtype).double()).flatten() for key in keys])


def test_bf16_weights_train_like_float32_at_the_paper_learning_rate(tmp_path, dataset_dir, student_dir):
    """At lr 5e-6 a bf16 weight of magnitude 0.02 (half-ulp about 5e-5) would keep most plain-AdamW updates from
    ever landing; `lavit train --model_dtype bfloat16` trains with Kahan-compensated AdamW, so its update points
    where the float32 run's does and most weights move."""
    flags = ("--max_steps", "20", "--learning_rate", "5e-6", "--warmup_steps", "0", "--lr_scheduler_type", "constant",
             "--per_device_train_batch_size", "1")  # fmt: skip
    for dtype in ("float32", "bfloat16"):
        _train(tmp_path, dataset_dir, student_dir, tmp_path / dtype, "--model_dtype", dtype, *flags)
    initial = load_file(student_dir / "model.safetensors")
    reference = _update(initial, load_file(tmp_path / "float32" / "model.safetensors"), torch.float32)
    bf16 = _update(initial, load_file(tmp_path / "bfloat16" / "model.safetensors"), torch.bfloat16)
    moved = bf16[reference != 0] != 0
    cosine = torch.nn.functional.cosine_similarity(reference, bf16, dim=0).item()
    # This run gives 55% moved and cosine 0.85; torch's plain AdamW on the same bf16 weights gives 8% and 0.25.
    assert moved.float().mean().item() > 0.4, moved.float().mean().item()
    assert cosine > 0.75, cosine
    assert 0.7 < (bf16.norm() / reference.norm()).item() < 1.4


def test_bf16_weights_get_a_compensated_optimizer_or_a_refusal(tiny_lavit, tmp_path):
    from optimi import StableAdamW

    from trainer.kahan_adamw import KahanAdamW

    model = tiny_lavit[0].to(torch.bfloat16)
    args = LaViTTrainingArguments(output_dir=str(tmp_path), model_dtype="bfloat16", use_cpu=True)
    cls, kwargs = LaViTTrainer.get_optimizer_cls_and_kwargs(args, model)
    assert cls is KahanAdamW and kwargs["lr"] == args.learning_rate and kwargs["weight_decay"] == args.weight_decay
    stable = LaViTTrainingArguments(
        output_dir=str(tmp_path), model_dtype="bfloat16", use_cpu=True, optim="stable_adamw"
    )
    assert LaViTTrainer.get_optimizer_cls_and_kwargs(stable, model)[0] is StableAdamW
    sgd = LaViTTrainingArguments(output_dir=str(tmp_path), model_dtype="bfloat16", use_cpu=True, optim="sgd")
    with pytest.raises(ValueError, match="round most updates away"):
        LaViTTrainer.get_optimizer_cls_and_kwargs(sgd, model)
    # float32 weights keep the Trainer's choice.
    assert LaViTTrainer.get_optimizer_cls_and_kwargs(sgd, model.float())[0] is torch.optim.SGD


# Data whose features do not fix the V_top width


def _plain_list_vtop_dataset(folder: Path, widths: list[int]) -> Path:
    columns = synthetic_lavit_rows(len(widths), D, image_sizes=SMALL, teacher_grids=((2, 2),))
    columns[schema.VTOP] = [vector[:width] for vector, width in zip(columns[schema.VTOP], widths, strict=True)]
    features = schema.lavit_features(D)
    features[schema.VTOP] = datasets.List(datasets.Value("float32"))  # any length
    dataset = datasets.Dataset.from_dict(columns, features=features)
    dataset.to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    return folder


def test_vtop_width_is_read_from_the_data_when_the_features_do_not_fix_it(tmp_path, student_dir):
    data = _plain_list_vtop_dataset(tmp_path / "data", [D] * 2)
    out = tmp_path / "out"
    _train(tmp_path, data, student_dir, out, "--max_steps", "1")
    assert _state(out)["global_step"] == 1
    bad = _plain_list_vtop_dataset(tmp_path / "bad", [D, D - 1])
    with pytest.raises(ValueError, match=r"synthetic-1.*'vtop' has shape \(47,\), expected \(48,\)"):
        _train(tmp_path, bad, student_dir, tmp_path / "bad_out", "--max_steps", "1")
    empty = _plain_list_vtop_dataset(tmp_path / "empty", [0, D])
    with pytest.raises(ValueError, match=r"column 'vtop' of .*empty.*first row 'synthetic-0'.*must be positive"):
        _train(tmp_path, empty, student_dir, tmp_path / "empty_out", "--max_steps", "1")
