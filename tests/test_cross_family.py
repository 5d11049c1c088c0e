"""A teacher of another family trains a student through the public commands: `lavit extract` with a tiny teacher of
another width, then `lavit train` on its dataset from a base checkpoint of the student's family (a Qwen3-VL teacher
for a Qwen2.5-VL student, a Gemma 3 teacher for a Qwen3-VL student). The teacher's grids differ from the student's
(32-pixel tokens against 28, or Gemma 3's one fixed 4x4 grid), so the collator resamples every target, and the
student's V_top head takes the teacher's width."""

import json
import math

import datasets
import pytest
import torch
import yaml
from PIL import Image
from transformers import AutoModelForImageTextToText

from datasets_scripts.extract import main as extract_main
from datasets_scripts.extract import make_parser as extract_parser
from lavit_hf import build_tiny_base, schema
from lavit_hf.arguments import parse_with_config
from lavit_hf.tiny import TINY_MAX_PIXELS, TINY_MIN_PIXELS
from trainer.train import main as train_main
from trainer.train import make_parser as train_parser


TEACHER_WIDTH = 96  # the student is 64 wide
SIZES = [(140, 84), (196, 112), (84, 168), (224, 140)]  # (width, height): grids differ between 28- and 32-px tokens


@pytest.fixture(scope="module")
def source(module_tmp_dir):
    """A plain JSONL source of four images of different shapes."""
    root = module_tmp_dir("cross_family_source")
    generator = torch.Generator().manual_seed(0)
    lines = []
    for index, (width, height) in enumerate(SIZES):
        pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(root / f"im{index}.png")
        record = {"image": f"im{index}.png", "question": f"What is in picture {index}?", "answer": "A square."}
        lines.append(json.dumps({**record, "question_id": str(index)}))
    (root / "source.jsonl").write_text("\n".join(lines) + "\n")
    return root


def student_grid(processor, size: tuple[int, int]) -> tuple[int, int]:
    """The student's merged grid of an image of `size` (width, height), as its processor lays it out."""
    grid = processor.image_processor(images=[Image.new("RGB", size)], return_tensors="pt")["image_grid_thw"]
    _, height, width = grid[0].tolist()
    merge = processor.image_processor.merge_size
    return height // merge, width // merge


@pytest.mark.parametrize(("family", "student_family"), [("qwen3_vl", "qwen2_5_vl"), ("gemma3", "qwen3_vl")])
def test_another_family_teacher_trains_a_student(family, student_family, source, tmp_path):
    student_base, student_processor = build_tiny_base(student_family, seed=0)
    student_base.save_pretrained(tmp_path / "student_base")
    student_processor.save_pretrained(tmp_path / "student_base")
    teacher, teacher_processor = build_tiny_base(family, seed=2, hidden_size=TEACHER_WIDTH)
    teacher.save_pretrained(tmp_path / "teacher")
    teacher_processor.save_pretrained(tmp_path / "teacher")
    data = tmp_path / "data"
    extract_main(
        parse_with_config(
            extract_parser(),
            [
                "--source", str(source / "source.jsonl"), "--image-root", str(source), "--teacher",
                str(tmp_path / "teacher"), "--output-dir", str(data), "--response-from", "answer", "--methods",
                "attention", "gradient", "--token-features", "--strict",
            ],
        )
    )  # fmt: skip
    dataset = datasets.load_dataset(str(data), split="train")
    assert len(dataset) == len(SIZES) and schema.teacher_hidden_size_of(dataset) == TEACHER_WIDTH
    assert set(dataset[schema.TEACHER_FAMILY]) == {family}
    assert schema.trajectory_methods(dataset.column_names) == ["attention", "gradient"]
    for row, size in zip(dataset, SIZES, strict=True):
        teacher_grid = tuple(row[schema.TEACHER_GRID])
        assert teacher_grid != student_grid(student_processor, size)  # every target is resampled
        assert len(row[schema.TRAJECTORY_ATTENTION]) == math.prod(teacher_grid)

    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dataset_name_or_path": str(data), "min_pixels": TINY_MIN_PIXELS, "max_pixels": TINY_MAX_PIXELS,
                "activation_checkpointing": False, "gradient_accumulation_steps": 1, "per_device_train_batch_size": 2,
                "logging_steps": 1, "report_to": "none", "disable_tqdm": True, "use_cpu": True, "save_strategy": "no",
                "max_steps": 2, "learning_rate": 1e-3, "trajectory_method": "gradient", "vtop_source": "tokens",
            }
        )
    )  # fmt: skip
    out = tmp_path / "student"
    flags = ["--config", str(config), "--model_name_or_path", str(tmp_path / "student_base"), "--output_dir", str(out)]
    train_main(parse_with_config(train_parser(), flags))
    student = AutoModelForImageTextToText.from_pretrained(out)
    assert student.config.base_model_type == student_family and student.config.teacher_hidden_size == TEACHER_WIDTH
    assert student.vtop_head[-1].out_features == TEACHER_WIDTH
    logs = [entry for entry in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        assert all(math.isfinite(entry[key]) and entry[key] > 0 for key in ("loss_ce", "loss_vtop", "loss_traj"))
