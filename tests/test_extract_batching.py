"""Batched extraction (`--extraction_batch_size`) through `lavit extract`, for every teacher family: several samples
per teacher forward, right-padded, write what one sample per forward writes, column by column; a batch that fails is
redone one sample at a time."""

import json
import logging

import pytest
import torch
from extracted_rows import assert_rows_match, load_rows
from PIL import Image

from datasets_scripts.extract import ExtractionFailure, main, make_parser
from datasets_scripts.teacher import TEACHER_FAMILIES, TeacherError, TeacherExtractor
from lavit_hf import build_tiny_base, schema
from lavit_hf.arguments import parse_with_config
from lavit_hf.jsonl import read_jsonl


# Images of different sizes (different numbers of image tokens for the dynamic-resolution families), questions and
# answers of different lengths (the answer is the teacher-forced response), so that every batch is padded.
RECORDS = [
    ((140, 84), "Where is it?", "Top left."),
    ((56, 56), "What colour is the large square in the middle of the picture, and is it brighter than the rest?",
     "It is grey. It is a little brighter than the noise around it!\nSo the answer is grey, and yes."),
    ((112, 168), "Count the dots.", "Three dots. One is small."),
    ((84, 140), "Is there text?", "No."),
    ((168, 112), "Describe the image.", "Random coloured noise, with no object in it. Nothing else."),
    ((70, 98), "Which corner is darkest?", "The bottom right corner, I think."),
]
LONG = ((84, 84), "Tell a story.", " ".join(["A long answer."] * 60))  # over --max_length 150: skipped
MAX_LENGTH = "150"


@pytest.fixture(scope="module")
def source(module_tmp_dir):
    root = module_tmp_dir("batching")
    generator = torch.Generator().manual_seed(0)
    lines = []
    for i, ((w, h), question, answer) in enumerate([*RECORDS[:3], LONG, *RECORDS[3:]]):
        pixels = torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(root / f"im{i}.png")
        lines.append({"question_id": f"q{i}", "image": f"im{i}.png", "question": question, "answer": answer})
    lines.append({"question_id": "missing", "image": "missing.png", "question": "What?", "answer": "A thing."})
    (root / "source.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


@pytest.fixture(scope="module", params=list(TEACHER_FAMILIES))
def teacher_dir(request, module_tmp_dir):
    model, processor = build_tiny_base(request.param, seed=1)
    out = module_tmp_dir(f"teacher_{request.param}")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def extract(source, teacher_dir, out, batch_size: int, *extra: str):
    argv = ["--source", str(source / "source.jsonl"), "--image_root", str(source), "--teacher", str(teacher_dir),
            "--output_dir", str(out), "--response_from", "answer", "--methods", "attention", "gradient",
            "--attention_layers", "-2", "-1", "--split_steps", "sentence", "--token_features",
            "--gradient_batch_size", "4", "--max_length", MAX_LENGTH, "--extraction_batch_size", str(batch_size),
            *extra]
    main(parse_with_config(make_parser(), argv))
    return out


def failures(out) -> dict[str, str]:
    return {entry["question_id"]: entry["reason"] for entry in read_jsonl(out / "failures.jsonl")}


def test_batched_extraction_writes_what_one_sample_per_forward_writes(source, teacher_dir, tmp_path):
    one = load_rows(extract(source, teacher_dir, tmp_path / "one", 1))
    batched = load_rows(extract(source, teacher_dir, tmp_path / "three", 3))
    assert len(one) == len(RECORDS)
    # Padded batches: the samples' sequence lengths differ.
    assert len({row[schema.TRAJECTORY_SPAN][1] for row in one}) > 1
    assert_rows_match(batched, one, atol=1e-4)
    for out in (tmp_path / "one", tmp_path / "three"):
        assert failures(out) == {"q3": "too long", "missing": "missing image"}


def test_a_failing_batch_is_redone_one_sample_at_a_time(source, tmp_path, monkeypatch, caplog, tiny_teacher_dir):
    """A sample the teacher refuses inside a batch loses only itself: the batch is redone one sample at a time,
    counted and logged, and the other samples are written as one sample per forward writes them."""
    extract_batch = TeacherExtractor.extract_batch

    def refuse_counting(self, images, questions, responses, **kwargs):
        if RECORDS[2][1] in questions:
            raise TeacherError("a degenerate trajectory")
        return extract_batch(self, images, questions, responses, **kwargs)

    monkeypatch.setattr(TeacherExtractor, "extract_batch", refuse_counting)
    one = load_rows(extract(source, tiny_teacher_dir, tmp_path / "one", 1))
    with caplog.at_level(logging.INFO, logger="datasets_scripts.extract"):
        batched = load_rows(extract(source, tiny_teacher_dir, tmp_path / "three", 3))
    assert_rows_match(batched, one, atol=1e-4)
    assert len(one) == len(RECORDS) - 1
    assert failures(tmp_path / "three") == {"q2": "teacher failure", "q3": "too long", "missing": "missing image"}
    (entry,) = [e for e in read_jsonl(tmp_path / "three" / "failures.jsonl") if e["question_id"] == "q2"]
    assert entry["detail"] == "a degenerate trajectory"
    assert "in one batch failed (a degenerate trajectory); extracting them one at a time" in caplog.text
    assert "extraction batches redone one sample at a time 1" in caplog.text


def test_extraction_batch_size_may_change_on_restart(source, tiny_teacher_dir, tmp_path, caplog):
    """A run stopped part way resumes with another batch size (lowered after running out of memory, say): the values
    differ only by float rounding, so the restart is not refused."""
    out, blocks = tmp_path / "out", ("--generation_batch_size", "2")
    # Blocks of 4 records (2 generation batches of 2, holding a batch of 3): q0..q2 are written, then q3 stops the run.
    with pytest.raises(ExtractionFailure, match=r"question_id='q3'\): too long"):
        extract(source, tiny_teacher_dir, out, 3, "--strict", *blocks)
    with caplog.at_level(logging.INFO, logger="datasets_scripts.extract"):
        extract(source, tiny_teacher_dir, out, 1, *blocks)
    assert "Resuming: 3 of 8 samples already done" in caplog.text
    one = load_rows(extract(source, tiny_teacher_dir, tmp_path / "one", 1, *blocks))
    assert_rows_match(load_rows(out), one, atol=1e-4)


def test_generation_cache_reaches_the_run_and_the_card(source, tiny_teacher_dir, tmp_path):
    out = tmp_path / "static"
    argv = ["--source", str(source / "source.jsonl"), "--image_root", str(source), "--teacher", str(tiny_teacher_dir),
            "--output_dir", str(out), "--max_new_tokens", "4", "--limit", "2", "--generation_cache", "static"]
    main(parse_with_config(make_parser(), argv))
    assert json.loads((out / "manifest.json").read_text())["generation"]["cache"] == "static"
    assert "(left padding), static key-value cache." in (out / "README.md").read_text()
    assert len(load_rows(out)) == 2
