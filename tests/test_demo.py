"""A shortened `lavit demo` end to end: every artifact exists and loads, and a rerun resumes instead of redoing."""

import json

import pytest
from datasets import load_dataset
from PIL import Image
from transformers import AutoModelForImageTextToText

from lavit_cli import demo
from lavit_hf import LaViTForConditionalGeneration
from lavit_hf.schema import TRAJECTORY_ATTENTION, VTOP


ARGS = [
    "--teacher_steps", "4", "--pretrain_steps", "4", "--student_steps", "4", "--train_size", "12",
    "--test_size", "6", "--batch_size", "4", "--eval_batch_size", "6", "--seeds", "0", "1",
    "--response_from", "answer",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    scores = demo.main(demo.make_parser().parse_args(["--out", str(out), *ARGS]))
    return out, scores


def test_every_artifact_exists_and_loads(demo_run):
    out, scores = demo_run
    assert set(scores) == {"LaViT student", "CE-only student", "teacher"}
    assert all(0.0 <= result["accuracy"] <= 1.0 and "unparsed" in result for result in scores.values())
    report = (out / "report.md").read_text()
    assert "| LaViT student |" in report and "## What the numbers show" in report
    assert "inside the answer's box" in report
    for figure in ("loss_curves.png", "trajectories.png"):
        assert Image.open(out / figure).size[0] > 200
    dataset = load_dataset(str(out / "dataset" / "train"), split="train")
    assert len(dataset) == 16 and abs(sum(dataset[0][TRAJECTORY_ATTENTION]) - 1) < 1e-4 and len(dataset[0][VTOP]) == 128
    student = AutoModelForImageTextToText.from_pretrained(out / "students" / "lavit" / "stage2")
    assert type(student) is LaViTForConditionalGeneration and student.config.latent_token_ids
    for name in ("lavit", "ce-only", "teacher"):
        assert len((out / "eval" / f"{name}.jsonl").read_text().splitlines()) == 6


def test_a_rerun_resumes_from_the_artifacts(demo_run, monkeypatch):
    import datasets_scripts.teacher
    import evaluate_metrics.runner
    import trainer.train

    out, scores = demo_run

    def fail(what):
        return lambda *args, **kwargs: pytest.fail(f"{what} ran again")

    monkeypatch.setattr(demo, "train_teacher", fail("teacher fine-tuning"))
    monkeypatch.setattr(trainer.train, "main", fail("student training"))
    monkeypatch.setattr(datasets_scripts.teacher.TeacherExtractor, "extract", fail("teacher extraction"))
    monkeypatch.setattr(evaluate_metrics.runner.EvalRunner, "generate", fail("generation"))
    again = demo.main(demo.make_parser().parse_args(["--out", str(out), *ARGS]))
    assert json.dumps(again, sort_keys=True) == json.dumps(scores, sort_keys=True)
