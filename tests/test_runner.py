"""`lavit eval`: batched generation on real MMVP rows with tiny models, resumption under recorded settings, shared
pixel limits, and the latent switches."""

import copy
import csv
import functools
import json
import logging
import shutil

import pytest

from evaluate_metrics import load_benchmark
from evaluate_metrics.runner import (
    EvalArguments,
    EvalRunner,
    main,
    make_parser,
    settings_path,
    shared_pixel_limits,
)
from lavit_cli import cli
from lavit_hf.arguments import parse_with_config
from lavit_hf.jsonl import JsonlAppender
from lavit_hf.layout import pixel_limits, set_pixel_limits


TINY_LIMITS = ["--min_pixels", "3136", "--max_pixels", "50176"]


@pytest.fixture(scope="module")
def mmvp_root(module_tmp_dir, bench_samples):
    """The first MMVP pair in its official layout: Questions.csv and `MMVP Images/<Index>.jpg`."""
    root = module_tmp_dir("mmvp")
    with (bench_samples / "mmvp" / "Questions_reconstructed_from_visualsketchpad.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))[:3]
    with (root / "Questions.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    (root / "MMVP Images").mkdir()
    for index in (1, 2):
        shutil.copy(bench_samples / "mmvp" / "images" / f"{index}.jpg", root / "MMVP Images" / f"{index}.jpg")
    return root


@pytest.fixture(scope="module")
def dataset(mmvp_root):
    return load_benchmark("mmvp", mmvp_root)


@pytest.fixture(scope="module")
def rows(dataset):
    return list(dataset)


def _save(model, processor, folder, min_pixels, max_pixels):
    """A checkpoint whose processor was saved with these pixel limits."""
    processor = copy.deepcopy(processor)
    set_pixel_limits(processor, min_pixels, max_pixels)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def student_dir(module_tmp_dir, tiny_lavit_pair):
    """A tiny LaViT student trained (saved) at pixel limits other than the tiny defaults."""
    model, processor = tiny_lavit_pair
    return _save(model, processor, module_tmp_dir("runs") / "student", 3136, 12544)


@pytest.fixture(scope="module")
def base_dir(module_tmp_dir, tiny_teacher_pair):
    """A tiny base Qwen2.5-VL, saved at its own (tiny default) pixel limits."""
    model, processor = tiny_teacher_pair
    return _save(model, processor, module_tmp_dir("runs") / "base", 3136, 50176)


def run_eval(models, mmvp_root, output_dir, *flags):
    argv = ["--model", *map(str, models), "--benchmark", "mmvp", "--data_root", str(mmvp_root)]
    argv += ["--output_dir", str(output_dir), "--max_new_tokens", "3", "--batch_size", "2", *flags]
    return main(parse_with_config(make_parser(), argv))


def recorded(output_dir, name):
    return json.loads(settings_path(output_dir / "mmvp" / f"{name}.jsonl").read_text())


def test_end_to_end_on_real_rows_resume_and_refusal(student_dir, mmvp_root, tmp_path, monkeypatch):
    scores = run_eval([student_dir], mmvp_root, tmp_path)
    output = tmp_path / "mmvp" / "student.jsonl"
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in records] == ["1", "2"]
    assert set(scores[str(student_dir)]) >= {"accuracy", "pair_accuracy", "unparsed"}
    summary = json.loads((tmp_path / "mmvp" / "student.summary.json").read_text())
    assert summary["benchmark"] == "mmvp" and summary["scores"] == scores[str(student_dir)]
    assert summary["settings"] == recorded(tmp_path, "student")
    assert "| student |" in (tmp_path / "mmvp" / "summary.md").read_text()
    # A torn last line (a kill mid-write) is cut off and only that item is generated again.
    first = output.read_text().splitlines(keepends=True)[0]
    output.write_text(first + '{"id": "2", "predi')
    assert run_eval([student_dir], mmvp_root, tmp_path) == scores
    assert output.read_text().startswith(first) and output.read_text().splitlines()[1:] == [json.dumps(records[1])]
    # A rerun generates nothing: every id is already in the output, made with the same weights and settings.
    monkeypatch.setattr(EvalRunner, "generate", lambda self, rows: pytest.fail("regenerated a finished item"))
    assert run_eval([student_dir], mmvp_root, tmp_path) == scores
    # Other generation settings never reuse these predictions.
    with pytest.raises(ValueError, match=r"student.jsonl holds 2 predictions .*max_new_tokens 3 there, 4 now"):
        run_eval([student_dir], mmvp_root, tmp_path, "--max_new_tokens", "4")


def test_predictions_are_only_resumed_by_the_same_weights_and_settings(tiny_lavit_pair, dataset, tmp_path):
    model, processor = tiny_lavit_pair

    def runner(model=model, **settings):
        own = copy.deepcopy(processor)
        set_pixel_limits(own, 3136, 50176)
        return EvalRunner(model, own, **{"max_new_tokens": 2, **settings})

    output = tmp_path / "predictions.jsonl"
    runner().run(dataset, output)
    assert runner().resume(output) == {json.loads(line)["id"]: json.loads(line) for line in output.open()}
    with pytest.raises(ValueError, match=r"max_new_tokens 2 there, 3 now"):
        runner(max_new_tokens=3).resume(output)
    with pytest.raises(ValueError, match=r"force_latent False there, True now"):
        runner(force_latent=True).resume(output)
    with pytest.raises(ValueError, match=r"max_pixels 50176 there, 12544 now"):
        runner(max_pixels=12544).resume(output)
    # Another checkpoint (here: one weight matrix changed) is refused by its weights, whatever its name.
    retrained = copy.deepcopy(model)
    retrained.lm_head.weight.data.mul_(2)
    with pytest.raises(ValueError, match=r"other weights or settings \(weights '[0-9a-f]+' there, '[0-9a-f]+' now"):
        runner(model=retrained).resume(output)
    # Predictions whose settings were lost are not credited to anyone.
    settings_path(output).unlink()
    with pytest.raises(ValueError, match="holds 2 predictions but no predictions.settings.json"):
        runner().resume(output)


def test_a_malformed_predictions_file_is_named(tiny_lavit_pair, rows, tmp_path):
    model, processor = tiny_lavit_pair
    runner = EvalRunner(model, copy.deepcopy(processor), max_new_tokens=2)
    output = tmp_path / "predictions.jsonl"
    output.write_text('{"id": "1", "prediction": "a"}\n{"id": "1", "prediction": "b"}\n')
    with pytest.raises(ValueError, match=r"predictions.jsonl, record 2: id '1' is predicted a second time"):
        runner.resume(output)
    output.write_text('{"id": "1", "prediction": "a"}\nnot json\n{"id": "2", "prediction": "b"}\n')
    with pytest.raises(ValueError, match=r"predictions.jsonl, line 2: not a JSON record"):
        runner.resume(output)
    output.write_text('{"id": 1}\n')
    with pytest.raises(ValueError, match=r"predictions.jsonl, record 1: expected string 'id' and 'prediction'"):
        runner.resume(output)


def test_a_failed_append_names_the_file(tiny_lavit_pair, dataset, tmp_path, monkeypatch):
    model, processor = tiny_lavit_pair

    def disk_full(self, *records):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(JsonlAppender, "write", disk_full)
    runner = EvalRunner(model, copy.deepcopy(processor), max_new_tokens=1)
    with pytest.raises(OSError, match=r"Cannot append to the predictions file .*predictions.jsonl: \[Errno 28\]"):
        runner.run(dataset, tmp_path / "predictions.jsonl")


def test_pixel_limits_default_to_the_lavit_checkpoints_for_every_model(student_dir, base_dir, mmvp_root, tmp_path):
    seen = {}
    original = EvalRunner.generate

    def spy(self, batch):
        seen[self.model.name_or_path] = pixel_limits(self.processor)
        return original(self, batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EvalRunner, "generate", spy)
        scores = run_eval([base_dir, student_dir], mmvp_root, tmp_path)
    # The student was saved at max 12,544 pixels; the base model, compared in the same command, sees the same.
    assert seen == {str(base_dir): (3136, 12544), str(student_dir): (3136, 12544)}
    for name in ("base", "student"):
        assert (recorded(tmp_path, name)["min_pixels"], recorded(tmp_path, name)["max_pixels"]) == (3136, 12544)
    assert list(scores) == [str(base_dir), str(student_dir)]
    table = (tmp_path / "mmvp" / "summary.md").read_text()
    assert "| base |" in table and "| student |" in table and "min 3136, max 12544" in table


def test_explicit_pixel_limits_override_with_a_warning(student_dir, base_dir, mmvp_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="evaluate_metrics.runner"):
        run_eval([base_dir, student_dir], mmvp_root, tmp_path, *TINY_LIMITS)
    warnings = [record.getMessage() for record in caplog.records if record.name == "evaluate_metrics.runner"]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{student_dir} was saved with pixel limits min 3136, max 12544")
    assert recorded(tmp_path, "student")["max_pixels"] == recorded(tmp_path, "base")["max_pixels"] == 50176


def test_checkpoints_saved_at_other_limits_need_explicit_ones(caplog):
    saved = {"runs/base": (3136, 50176), "runs/other": (3136, 12544)}
    refused = r"limits \(runs/base: min 3136, max 50176; runs/other: min 3136, max 12544\): pass --max_pixels to"
    with pytest.raises(ValueError, match=refused):
        shared_pixel_limits(saved, lavit=[])
    assert shared_pixel_limits(saved, lavit=[], max_pixels=12544) == (3136, 12544)
    # The LaViT checkpoints decide; a base model follows them, and only explicit limits draw a warning.
    assert shared_pixel_limits(saved, lavit=["runs/other"]) == (3136, 12544)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="evaluate_metrics.runner"):
        assert shared_pixel_limits(saved, lavit=["runs/other"], min_pixels=6272) == (6272, 12544)
    warned = sorted(record.getMessage().split()[0] for record in caplog.records if record.levelno == logging.WARNING)
    assert warned == ["runs/base", "runs/other"]


def test_latent_switches_are_refused_for_a_base_model_before_loading(student_dir, base_dir, mmvp_root, tmp_path):
    with pytest.raises(ValueError, match=r"--force_latent and --mask_latent need LaViT models; \[.*base'\]"):
        run_eval([student_dir, base_dir], mmvp_root, tmp_path, "--force_latent")


def test_options_parse_from_flags_dashes_and_a_config_file(tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text("model: [a, b]\nbenchmark: mmvp\ndata-root: MMVP\noutput_dir: out\nmax_new_tokens: 16\n")
    parsed = parse_with_config(make_parser(), ["--config", str(config), "--batch-size", "2", "--force_latent"])
    assert (parsed.model, parsed.data_root, parsed.max_new_tokens, parsed.batch_size) == (["a", "b"], "MMVP", 16, 2)
    assert parsed.force_latent is True and parsed.min_pixels is None
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    help_text = capsys.readouterr().out
    assert "--config CONFIG" in help_text and "--max_new_tokens" in help_text and "--data_root" in help_text
    # One definition of each default: the runner's keywords take the dataclass's.
    assert EvalRunner.__init__.__defaults__[:2] == (EvalArguments.batch_size, EvalArguments.max_new_tokens)


def test_batched_generation_equals_one_at_a_time(tiny_lavit_pair, rows):
    model, processor = tiny_lavit_pair
    runner = EvalRunner(model, processor, batch_size=2, max_new_tokens=4, min_pixels=3136, max_pixels=50176)
    assert runner.generate(rows) == [runner.generate([row])[0] for row in rows]


def test_force_latent_puts_the_k_trained_tokens_first(tiny_lavit_pair, rows):
    model, processor = tiny_lavit_pair
    runner = EvalRunner(model, processor, max_new_tokens=2, force_latent=True, min_pixels=3136, max_pixels=50176)
    inputs = processor(text=runner.prompts(rows[:1]), images=[rows[0]["image"]], return_tensors="pt")
    prompt_ids = inputs["input_ids"][0]
    assert prompt_ids[-4:].tolist() == model.config.latent_token_ids
    assert processor.tokenizer.decode(prompt_ids[-5:-4]) == "\n"  # right after the assistant header


def test_mask_latent_changes_generation_inputs(tiny_lavit_pair, rows, monkeypatch):
    """--mask_latent reaches every generate call (the model-level tests check what the mask does)."""
    model, processor = tiny_lavit_pair
    seen = []
    original = type(model).forward

    @functools.wraps(original)
    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("mask_latent"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", spy)
    runner = EvalRunner(
        model, processor, max_new_tokens=3, force_latent=True, mask_latent=True, min_pixels=3136, max_pixels=50176
    )
    runner.generate(rows[:1])
    assert seen == [True, True, True]


def test_switches_refuse_a_model_without_latent_tokens(tiny_teacher_pair):
    model, processor = tiny_teacher_pair
    with pytest.raises(ValueError, match="--force_latent needs a LaViT model"):
        EvalRunner(model, processor, force_latent=True)
    with pytest.raises(ValueError, match="--mask_latent needs a LaViT model"):
        EvalRunner(model, processor, mask_latent=True)


def test_base_qwen_model_runs_with_the_same_pixel_limits(tiny_teacher_pair, rows):
    model, processor = tiny_teacher_pair
    runner = EvalRunner(model, processor, max_new_tokens=2, min_pixels=3136, max_pixels=50176)
    assert processor.image_processor.size == {"shortest_edge": 3136, "longest_edge": 50176}
    assert len(runner.generate(rows)) == 2
