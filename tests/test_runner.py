"""`lavit eval`: batched generation on real MMVP rows with a tiny model, resumption, and the latent switches."""

import csv
import functools
import json
import shutil

import pytest

from evaluate_metrics import load_benchmark
from evaluate_metrics.runner import EvalRunner, main, make_parser


@pytest.fixture(scope="module")
def mmvp_root(tmp_path_factory, bench_samples):
    """The first MMVP pair in its official layout: Questions.csv and `MMVP Images/<Index>.jpg`."""
    root = tmp_path_factory.mktemp("mmvp")
    with (bench_samples / "mmvp" / "Questions_reconstructed_from_visualsketchpad.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))[:3]
    with (root / "Questions.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    (root / "MMVP Images").mkdir()
    for index in (1, 2):
        shutil.copy(bench_samples / "mmvp" / "images" / f"{index}.jpg", root / "MMVP Images" / f"{index}.jpg")
    return root


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, tiny_lavit_pair):
    model, _ = tiny_lavit_pair
    out = tmp_path_factory.mktemp("student")
    model.save_pretrained(out)
    return out


def run_eval(student_dir, mmvp_root, output, *flags):
    argv = ["--model", str(student_dir), "--benchmark", "mmvp", "--data-root", str(mmvp_root), "--output", str(output)]
    argv += ["--max-new-tokens", "3", "--min-pixels", "3136", "--max-pixels", "50176", "--batch-size", "2", *flags]
    return main(make_parser().parse_args(argv))


def test_end_to_end_on_real_rows_and_resume(student_dir, mmvp_root, tmp_path, monkeypatch):
    output = tmp_path / "mmvp.jsonl"
    scores = run_eval(student_dir, mmvp_root, output)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in records] == ["1", "2"]
    assert set(scores) >= {"accuracy", "pair_accuracy", "unparsed"}
    assert json.loads((tmp_path / "mmvp.summary.json").read_text())["benchmark"] == "mmvp"
    assert "| accuracy |" in (tmp_path / "mmvp.summary.md").read_text()
    # A rerun generates nothing: every id is already in the output.
    monkeypatch.setattr(EvalRunner, "generate", lambda self, rows: pytest.fail("regenerated a finished item"))
    assert run_eval(student_dir, mmvp_root, output) == scores


def test_a_torn_last_line_is_regenerated(student_dir, mmvp_root, tmp_path):
    output = tmp_path / "mmvp.jsonl"
    output.write_text(json.dumps({"id": "1", "prediction": "(a)"}) + "\n" + '{"id": "2", "predi')
    run_eval(student_dir, mmvp_root, output)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in records] == ["1", "2"] and records[0]["prediction"] == "(a)"


def test_batched_generation_equals_one_at_a_time(tiny_lavit_pair, mmvp_root):
    model, processor = tiny_lavit_pair
    rows = list(load_benchmark("mmvp", mmvp_root))
    runner = EvalRunner(model, processor, batch_size=2, max_new_tokens=4, min_pixels=3136, max_pixels=50176)
    assert runner.generate(rows) == [runner.generate([row])[0] for row in rows]


def test_force_latent_puts_the_k_trained_tokens_first(tiny_lavit_pair, mmvp_root):
    model, processor = tiny_lavit_pair
    rows = list(load_benchmark("mmvp", mmvp_root))
    runner = EvalRunner(model, processor, max_new_tokens=2, force_latent=True, min_pixels=3136, max_pixels=50176)
    prompt_ids = processor(text=runner.prompts(rows[:1]), images=[rows[0]["image"]], return_tensors="pt")["input_ids"][0]
    assert prompt_ids[-4:].tolist() == model.config.latent_token_ids
    assert processor.tokenizer.decode(prompt_ids[-5:-4]) == "\n"  # right after the assistant header


def test_mask_latent_changes_generation_inputs(tiny_lavit_pair, mmvp_root, monkeypatch):
    """--mask-latent reaches every generate call (the model-level tests check what the mask does)."""
    model, processor = tiny_lavit_pair
    rows = list(load_benchmark("mmvp", mmvp_root))
    seen = []
    original = type(model).forward

    @functools.wraps(original)
    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("mask_latent"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", spy)
    EvalRunner(model, processor, max_new_tokens=3, force_latent=True, mask_latent=True, min_pixels=3136, max_pixels=50176).generate(rows[:1])
    assert seen == [True, True, True]


def test_switches_refuse_a_model_without_latent_tokens(tiny_teacher_pair):
    model, processor = tiny_teacher_pair
    with pytest.raises(ValueError, match="--force-latent needs a LaViT model"):
        EvalRunner(model, processor, force_latent=True)
    with pytest.raises(ValueError, match="--mask-latent needs a LaViT model"):
        EvalRunner(model, processor, mask_latent=True)


def test_base_qwen_model_runs_with_the_same_pixel_limits(tiny_teacher_pair, mmvp_root):
    model, processor = tiny_teacher_pair
    rows = list(load_benchmark("mmvp", mmvp_root))
    runner = EvalRunner(model, processor, max_new_tokens=2, min_pixels=3136, max_pixels=50176)
    assert processor.image_processor.size == {"shortest_edge": 3136, "longest_edge": 50176}
    assert len(runner.generate(rows)) == 2
