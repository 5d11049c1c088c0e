"""A shortened `lavit demo` end to end: every artifact exists and loads, and a rerun resumes instead of redoing."""

import json

import pytest
from datasets import load_dataset
from PIL import Image
from transformers import AutoModelForImageTextToText

from lavit_cli import demo
from lavit_hf import LaViTForConditionalGeneration
from lavit_hf.schema import TRAJECTORY_GRADIENT, VTOP


# Narrow models: every checkpoint carries the 151k-token vocabulary, 49 MB at width 32 against 161 MB at the default 128.
ARGS = [
    "--teacher_steps", "4", "--pretrain_steps", "4", "--student_steps", "4", "--train_size", "12",
    "--test_size", "6", "--batch_size", "4", "--eval_batch_size", "6", "--seeds", "0", "1",
    "--response_from", "answer", "--teacher_hidden_size", "32", "--student_hidden_size", "32",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo_run(module_tmp_dir):
    out = module_tmp_dir("demo")
    scores = demo.main(demo.make_parser().parse_args(["--out", str(out), *ARGS]))
    return out, scores


def test_every_artifact_exists_and_loads(demo_run):
    out, results = demo_run
    assert set(results["students"]) == {"ce_only", "lavit_two_stage"}
    ids = results["test_ids"]
    for runs in results["students"].values():
        assert set(runs) == {0, 1}
        for run in runs.values():
            # Every held-out item scored under every diagnostic, and the probe's accuracy in [0, 1].
            assert all(set(run["items"][diagnostic]) == set(ids) for diagnostic in ("normal", "force", "mask"))
            assert 0.0 <= run["probe_accuracy"] <= 1.0
            # Where the student looks: a share of its predicted trajectory, next to a uniform map's share of the box.
            looks = run["trajectory_mass_in_box"]
            assert 0.0 <= looks["student"] <= 1.0 and 0.0 < looks["uniform"] < 1.0
    # What the V_top targets themselves tell a linear reader about the answer.
    assert 0.0 <= results["target_probe_accuracy"] <= 1.0
    report = (out / "report.md").read_text()
    assert "What the V_top targets carry" in report
    # What the figures were computed on, since the teacher's training depends on the CPU's floating-point kernels.
    assert results["environment"]["torch"] and results["environment"]["device"] == "cpu"
    assert f"torch {results['environment']['torch']}" in report
    assert "| lavit_two_stage |" in report and "## What the numbers show" in report
    assert "lavit_two_stage against ce_only" in report and "relies on its latent tokens" in report
    assert "looks at the box" in report and "Where each student looks" in report
    for figure in ("accuracy.png", "loss_curves.png"):
        assert Image.open(out / figure).size[0] > 200
    dataset = load_dataset(str(out / "dataset" / "train"), split="train")
    assert len(dataset) == 12 and abs(sum(dataset[0][TRAJECTORY_GRADIENT]) - 1) < 1e-4 and len(dataset[0][VTOP]) == 32
    student = AutoModelForImageTextToText.from_pretrained(out / "students" / "lavit_two_stage" / "seed1" / "stage2")
    assert type(student) is LaViTForConditionalGeneration and student.config.latent_token_ids
    assert len((out / "eval" / "teacher.jsonl").read_text().splitlines()) == 6
    assert json.loads((out / "results.json").read_text())["test_ids"] == ids


def test_a_rerun_resumes_from_the_artifacts(demo_run, monkeypatch):
    import datasets_scripts.teacher
    import evaluate_metrics.runner
    import trainer.train

    out, scores = demo_run

    def fail(what):
        return lambda *args, **kwargs: pytest.fail(f"{what} ran again")

    monkeypatch.setattr(demo, "fine_tune", fail("teacher fine-tuning or student pre-training"))
    monkeypatch.setattr(trainer.train, "main", fail("student training"))
    monkeypatch.setattr(datasets_scripts.teacher.TeacherExtractor, "extract_batch", fail("teacher extraction"))
    monkeypatch.setattr(evaluate_metrics.runner.EvalRunner, "generate", fail("generation"))
    again = demo.main(demo.make_parser().parse_args(["--out", str(out), *ARGS]))
    assert again["seconds"] < scores["seconds"]
    # A setting the existing students were trained with cannot change in the same folder.
    with pytest.raises(ValueError, match=r"stage2_learning_rate_ratio: 0\.4 -> 1\.0"):
        demo.main(demo.make_parser().parse_args(["--out", str(out), *ARGS, "--stage2_learning_rate_ratio", "1.0"]))
    timings = ("seconds", "phase_seconds")
    assert {k: v for k, v in again.items() if k not in timings} == {k: v for k, v in scores.items() if k not in timings}


def test_the_ablation_trains_every_variant_at_one_budget_and_reports_each(demo_run):
    """`--ablation` in the default run's folder (after the resume test, which needs it as the default run left it)
    adds every other variant at the same steps, batch and stage split, and the report compares each with CE-only and
    tests each for reliance."""
    from lavit_cli.experiment import PAPER_STAGE1_SHARE, VARIANTS

    out = demo_run[0]
    steps, batch_size = int(ARGS[ARGS.index("--student_steps") + 1]), int(ARGS[ARGS.index("--batch_size") + 1])
    results = demo.main(demo.make_parser().parse_args(["--out", str(out), *ARGS, "--ablation"]))
    assert set(results["students"]) == set(VARIANTS)
    report = (out / "report.md").read_text()
    for name, variant in VARIANTS.items():
        assert set(results["students"][name]) == {0, 1}
        for seed_dir in (out / "students" / name / f"seed{seed}" for seed in (0, 1)):
            stages = [seed_dir / "stage1", seed_dir / "stage2"] if variant.two_stage else [seed_dir]
            states = [json.loads((stage / "trainer_state.json").read_text()) for stage in stages]
            assert sum(state["global_step"] for state in states) == steps
            assert {state["train_batch_size"] for state in states} == {batch_size}
            if variant.two_stage:
                assert states[0]["global_step"] == round(steps * PAPER_STAGE1_SHARE)
        assert f"| {name} |" in report and f"**{name} relies on its latent tokens?**" in report
        if name != "ce_only":
            assert f"**{name} against ce_only**" in report


@pytest.mark.parametrize(("temperature", "expected"), [(None, None), (0.1, 0.1)])
def test_the_gradient_temperature_reaches_the_extraction(temperature, expected, tmp_path, monkeypatch):
    from datasets_scripts import extract as extraction

    seen = []
    monkeypatch.setattr(extraction, "main", seen.append)
    args = demo.DemoArguments(out=str(tmp_path), gradient_temperature=temperature)
    demo.extract(args, tmp_path / "teacher", tmp_path / "source.jsonl", tmp_path / "dataset")
    assert seen[0].gradient_temperature == expected


@pytest.mark.parametrize(("vtop_source", "token_features"), [("pooled", False), ("trajectory", True)])
def test_trajectory_weighted_vtop_extracts_token_features(vtop_source, token_features, tmp_path, monkeypatch):
    from datasets_scripts import extract as extraction

    seen = []
    monkeypatch.setattr(extraction, "main", seen.append)
    args = demo.DemoArguments(out=str(tmp_path), vtop_source=vtop_source)
    demo.extract(args, tmp_path / "teacher", tmp_path / "source.jsonl", tmp_path / "dataset")
    assert seen[0].token_features is token_features


def test_every_demo_option_of_lavit_train_reaches_the_students():
    """A demo option that names a `lavit train` argument trains the students with its value (the budget's own
    options, the learning rate among them, go through `Budget`; the seed loop sets `seed`)."""
    import dataclasses

    from trainer.configuration import LaViTTrainingArguments

    training_names = {f.name for f in dataclasses.fields(LaViTTrainingArguments)}
    shared = {f.name for f in dataclasses.fields(demo.DemoArguments)} & training_names - {"learning_rate", "seed"}
    args = demo.DemoArguments(
        num_latent_tokens=16, latent_separator=" ", trajectory_method="attention", vtop_normalization="standardize",
        vtop_source="trajectory", head_layer=1,
    )  # fmt: skip
    settings = demo.student_settings(args)
    assert shared <= set(settings)
    assert {name: settings[name] for name in shared} == {name: getattr(args, name) for name in shared}
    LaViTTrainingArguments(output_dir="unused", use_cpu=True, report_to=[], **settings)
