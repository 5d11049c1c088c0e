"""Bad input through `lavit extract` on a tiny teacher: every kind is a named error, or a counted failure listed with
its index, id and reason while every valid sample is still written; kills, concurrent runs and full disks lose
nothing."""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from datasets_scripts import extract as extraction
from datasets_scripts.extract import ExtractionFailure, ExtractOptions, main, make_parser
from datasets_scripts.sources import RecordFormatError, load_image, read_source
from datasets_scripts.teacher import ExtractionSettings, GenerationSettings, TeacherExtractor
from datasets_scripts.writer import (
    CHUNKS_DIR,
    INDEX,
    FolderLockedError,
    ShardWriter,
    chunk_order,
    shard_folder,
    write_final,
)
from lavit_hf import schema
from lavit_hf.arguments import parse_with_config
from lavit_hf.grids import box_mass
from lavit_hf.images import to_rgb
from lavit_hf.jsonl import read_jsonl
from lavit_hf.testing_utils import synthetic_lavit_rows


REPO_ROOT = Path(__file__).resolve().parents[1]
MID_GREY_16 = 32896  # 128 * 257: mid-grey at 16 bits, 128 at 8 bits


@pytest.fixture(scope="module")
def images(module_tmp_dir) -> Path:
    """Noise images of a few sizes (56x56: a 29-token prompt, 224x224: 89 tokens, 500x400 for pixel boxes) and
    greys at 16 and 8 bits."""
    root = module_tmp_dir("bad_input_images")
    for i, (name, size) in enumerate([("a.png", (56, 56)), ("big.png", (224, 224)), ("wide.png", (500, 400))]):
        Image.effect_noise(size, 40 + 10 * i).convert("RGB").save(root / name)
    Image.fromarray(np.full((56, 56), MID_GREY_16, dtype=np.uint16)).save(root / "grey16.png")
    Image.fromarray(np.full((56, 56), 128, dtype=np.uint8)).save(root / "grey8.png")
    Image.new("L", (56, 56), 255).save(root / "white.png")
    Image.new("RGB", (600, 2)).save(root / "sliver.png")  # an aspect ratio the processor refuses
    return root


def plain(qid: str, image: str = "a.png", question: str = "What is it?", answer: str = "Noise.", **extra) -> dict:
    return {"question_id": qid, "image": image, "question": question, "answer": answer, **extra}


def write_source(path: Path, records: list) -> Path:
    """A JSONL source; a string is written as the line itself."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def extract(source: Path, images: Path, teacher, out: Path, *extra: str) -> Path:
    """`lavit extract` with the record's answer as the response (no generation: fast) and chunks of 2 samples."""
    argv = ["--source", str(source), "--image_root", str(images), "--teacher", str(teacher), "--output_dir", str(out),
            "--response_from", "answer", "--chunk_size", "2", *extra]
    main(parse_with_config(make_parser(), argv))
    return out


def written_ids(out: Path) -> list[str]:
    return datasets.load_dataset(str(out), split="train")[schema.ID]


def failures(out: Path) -> dict[str, dict]:
    return {entry["question_id"]: entry for entry in read_jsonl(out / "failures.jsonl")}


# User text never holds a token the layout reserves


def test_reserved_tokens_are_counted_failures_or_strict_errors(images, tiny_teacher_dir, tmp_path):
    source = write_source(tmp_path / "src.jsonl", [
        plain("ok0"),
        plain("latent", question="Which shape <lvr1> is left?"),
        plain("pad", question="Look at <|image_pad|> here."),
        plain("end", answer="Done.<|im_end|>"),
        plain("ok4", question="Is <lvr> a word?"),  # not a latent token
    ])
    out = extract(source, images, tiny_teacher_dir, tmp_path / "out")
    assert written_ids(out) == ["src/ok0", "src/ok4"]
    failed = failures(out)
    assert {qid: entry["reason"] for qid, entry in failed.items()} == {
        "latent": "reserved token", "pad": "reserved token", "end": "reserved token"}
    assert [failed[qid]["index"] for qid in ("latent", "pad", "end")] == [1, 2, 3]
    assert "question holds the special token '<lvr1>'" in failed["latent"]["detail"]
    assert "'<|image_pad|>'" in failed["pad"]["detail"]
    assert "answer holds the special token '<|im_end|>'" in failed["end"]["detail"]
    with pytest.raises(ExtractionFailure, match=r"record 1 \(question_id='latent'\): reserved token: .*'<lvr1>'"):
        extract(source, images, tiny_teacher_dir, tmp_path / "strict", "--strict")


# A maximum length, by default the teacher's positions


def test_samples_over_max_length_are_skipped(images, tiny_teacher_dir, tmp_path):
    source = write_source(tmp_path / "src.jsonl", [
        plain("ok"),
        plain("long_answer", answer=" ".join(["word"] * 5000)),  # past the tiny teacher's 4,096 positions
        plain("big", image="big.png"),  # an 89-token prompt
        plain("wordy", answer=" ".join(["word"] * 40)),
    ])
    out = extract(source, images, tiny_teacher_dir, tmp_path / "default")
    assert written_ids(out) == ["src/ok", "src/big", "src/wordy"]
    (entry,) = failures(out).values()
    assert entry["question_id"] == "long_answer" and entry["reason"] == "too long"
    assert "over max_length 4096" in entry["detail"]
    assert json.loads((out / "manifest.json").read_text())["max_length"] == 4096

    out = extract(source, images, tiny_teacher_dir, tmp_path / "short", "--max_length", "60")
    assert written_ids(out) == ["src/ok"]
    failed = failures(out)
    assert {qid: entry["reason"] for qid, entry in failed.items()} == {
        "long_answer": "too long", "big": "too long", "wordy": "too long"}
    assert "the prompt (image and question) is 89 tokens" in failed["big"]["detail"]
    assert "over max_length 60" in failed["wordy"]["detail"]
    assert "Length: at most 60 tokens" in (out / "README.md").read_text()
    with pytest.raises(ExtractionFailure, match=r"record 2 \(question_id='big'\): too long: the prompt"):
        extract(source, images, tiny_teacher_dir, tmp_path / "strict", "--max_length", "60", "--strict")


# Boxes: pixel boxes normalised with the image's size, impossible boxes refused, naming the record


def test_pixel_boxes_are_normalised_and_bad_boxes_refused(images, tiny_teacher_dir, tmp_path, caplog):
    source = write_source(tmp_path / "src.jsonl", [
        plain("pixels", image="wide.png", bbox=[82, 60, 409, 321]),
        plain("negative", image="wide.png", bbox=[-0.1, 0.2, 0.5, 0.6]),
        plain("outside", image="wide.png", bbox=[10, 10, 600, 300]),
        plain("normalised", image="wide.png", bbox=[0.1, 0.2, 0.5, 0.6]),
        plain("none", image="wide.png"),
    ])
    with caplog.at_level(logging.INFO, logger="datasets_scripts.extract"):
        out = extract(source, images, tiny_teacher_dir, tmp_path / "out", "--min_box_mass", "0.05")
    assert "pixel boxes normalised 1" in caplog.text
    failed = failures(out)
    assert {qid: entry["reason"] for qid, entry in failed.items()} == {
        "negative": "malformed record", "outside": "bad box"}
    assert "negative or non-finite coordinate" in failed["negative"]["detail"]
    assert "500x400 image" in failed["outside"]["detail"]
    rows = {row[schema.QUESTION_ID]: row for row in datasets.load_dataset(str(out), split="train")}
    filtered = {entry["question_id"] for entry in read_jsonl(out / "filtered.jsonl")}
    assert set(rows) | filtered == {"pixels", "normalised", "none"}
    # The 500x400 image sits 50 pixels down in its 500x500 square: the box in the frame Visual-CoT uses.
    assert rows["pixels"][schema.BBOX] == pytest.approx([82 / 500, 110 / 500, 409 / 500, 371 / 500], abs=1e-6)
    pixel_row = rows["pixels"]
    mass = box_mass(pixel_row[schema.TRAJECTORY_ATTENTION], pixel_row[schema.TEACHER_GRID],
                    pixel_row[schema.IMAGE_SIZE], pixel_row[schema.BBOX])
    assert mass >= 0.05  # read as a normalised box, it would have been clipped to a point: mass 0, filtered
    assert rows["none"][schema.BBOX] == []


# High bit-depth images


def test_to_rgb_scales_high_bit_depth_and_composites_transparency():
    grey16 = Image.fromarray(np.full((4, 4), MID_GREY_16, dtype=np.uint16))
    assert grey16.mode == "I;16" and np.asarray(grey16.convert("RGB")).min() == 255  # PIL clips
    assert np.asarray(to_rgb(grey16)).tolist() == np.full((4, 4, 3), 128).tolist()
    assert to_rgb(grey16.convert("I")).getpixel((0, 0)) == (128, 128, 128)
    assert to_rgb(Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32))).getpixel((0, 0)) == (128, 128, 128)
    transparent = Image.new("LA", (2, 2), (0, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)  # onto white, as transformers' processors do
    palette = Image.new("P", (2, 2), 0)
    palette.info["transparency"] = 0
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)
    rgb = Image.new("RGB", (2, 2), (1, 2, 3))
    assert to_rgb(rgb) is rgb
    with pytest.raises(ValueError, match=r"values in \[70000, 70000\]"):
        to_rgb(Image.fromarray(np.full((2, 2), 70000, dtype=np.int32)))
    with pytest.raises(ValueError, match=r"values in \[2.0, 2.0\]"):
        to_rgb(Image.fromarray(np.full((2, 2), 2.0, dtype=np.float32)))


def test_sixteen_bit_greyscale_is_extracted_as_grey(images, tiny_teacher_dir, tmp_path):
    source = write_source(tmp_path / "src.jsonl", [plain("grey16", "grey16.png"), plain("grey8", "grey8.png"),
                                                   plain("white", "white.png"), plain("sliver", "sliver.png")])
    (record,) = read_source(source, image_root=images, limit=1)
    assert np.asarray(load_image(record)).mean() == 128
    out = extract(source, images, tiny_teacher_dir, tmp_path / "out")
    rows = datasets.load_dataset(str(out), split="train").cast_column(schema.IMAGE, datasets.Image(decode=False))
    vtop = {row[schema.QUESTION_ID]: row[schema.VTOP] for row in rows}
    # The teacher saw the 16-bit image as the same grey as the 8-bit one, not as white.
    assert vtop["grey16"] == vtop["grey8"] != vtop["white"]
    assert rows[0][schema.IMAGE]["bytes"] == (images / "grey16.png").read_bytes()  # stored as it was
    (entry,) = failures(out).values()
    assert (entry["question_id"], entry["reason"]) == ("sliver", "unusable image")
    assert "the processor refuses the (600, 2) image" in entry["detail"] and "aspect ratio" in entry["detail"]


# One malformed record never costs the others


def test_malformed_records_are_counted_and_the_rest_extracted(images, tiny_teacher_dir, tmp_path):
    two_turns = [{"from": "human", "value": "<image>\nWhat is it?"},
                 {"from": "gpt", "value": "<answer>Noise</answer>"}]
    source = write_source(tmp_path / "src.jsonl", [
        plain("ok0"),
        {"question_id": "shape", "picture": "a.png", "text": "hi"},
        {"question_id": "noanswer", "image": "a.png", "question": "What is it?"},
        {"question_id": "nobox", "image": ["a.png"], "conversations": two_turns},
        "[1, 2]",
        '{"question_id": "torn", "image": "a.',
        "",
        {"question_id": "ok6", "image": ["a.png"], "conversations": two_turns, "bboxes": [[0.1, 0.1, 0.5, 0.5]]},
    ])
    out = extract(source, images, tiny_teacher_dir, tmp_path / "out")
    assert written_ids(out) == ["src/ok0", "src/ok6"]
    failed = read_jsonl(out / "failures.jsonl")
    assert [(f["index"], f["question_id"], f["reason"]) for f in failed] == [
        (1, "shape", "malformed record"), (2, "noanswer", "malformed record"), (3, "nobox", "malformed record"),
        (4, "4", "malformed record"), (5, "5", "malformed record")]
    details = [f["detail"] for f in failed]
    assert "missing ['image', 'question', 'answer']" in details[0] and "missing ['answer']" in details[1]
    assert "needs a `bboxes` field" in details[2] and "expected a mapping of fields, got list" in details[3]
    assert f"{source}, line 5: expected a mapping" in details[3]
    assert f"{source}, line 6: not a JSON record" in details[4]  # the file's own line number
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts == {"records": 7, "written": 2, "failed": 5, "filtered": 0,
                      "failure_reasons": {"malformed record": 5}}
    # --strict stops at the first one, before the teacher is even looked for.
    with pytest.raises(RecordFormatError, match=r"record 1 \(question_id='shape'\) at .*src.jsonl, line 2"):
        extract(source, images, tmp_path / "no-teacher", tmp_path / "strict", "--strict")
    # A source none of whose records is readable (wrong columns) is refused at once, with or without --strict.
    with pytest.raises(RecordFormatError, match="None of the 2 records"):
        extract(source, images, tmp_path / "no-teacher", tmp_path / "cols", "--question_column", "q", "--limit", "2")


# Concurrent runs, unfinished folders, torn files


HOLD_LOCKS = """
import sys, time
from datasets_scripts.writer import FolderLock
locks = [FolderLock(path, "extracting (another run)").acquire() for path in sys.argv[1:]]
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_run_into_a_folder_is_refused_and_a_dead_run_is_not(images, tiny_teacher_dir, tmp_path, caplog):
    source = write_source(tmp_path / "src.jsonl", [plain("ok0"), plain("ok1")])
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCKS, str(shard_folder(out, 0, 1)), str(out)],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        # Refused at once: the lock is taken before the teacher loads (here it does not even exist).
        with pytest.raises(FolderLockedError, match=rf"in use by another run \(pid {holder.pid} on "):
            extract(source, images, tmp_path / "no-teacher", out)
        with pytest.raises(FolderLockedError, match=rf"{out} is in use by another run \(pid {holder.pid} "):
            main(parse_with_config(make_parser(), ["--merge", str(out), "--output_dir", str(out)]))
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing anything: the next run goes ahead and says what it found.
    with caplog.at_level(logging.WARNING, logger="datasets_scripts.writer"):
        extract(source, images, tiny_teacher_dir, out)
    assert f"the previous run there (pid {holder.pid} on" in caplog.text and "ended without finishing" in caplog.text
    assert written_ids(out) == ["src/ok0", "src/ok1"]


def test_an_unfinished_folder_is_not_loadable_and_chunk_size_must_match(images, tiny_teacher_dir, tmp_path):
    source = write_source(tmp_path / "src.jsonl", [plain(f"ok{i}") for i in range(4)])
    out = extract(source, images, tiny_teacher_dir, tmp_path / "out", "--num_shards", "2", "--shard_index", "0")
    assert list((out / CHUNKS_DIR).glob("*/chunk-*.parquet"))
    with pytest.raises(FileNotFoundError):  # never a partial dataset with the internal `_index` column
        datasets.load_dataset(str(out), split="train")
    with pytest.raises(ValueError, match=r"started with other settings \(\['chunk_size'\]\)"):
        extract(source, images, tiny_teacher_dir, out, "--num_shards", "2", "--shard_index", "0", "--chunk_size", "3")
    extract(source, images, tiny_teacher_dir, out, "--num_shards", "2", "--shard_index", "1")
    main(parse_with_config(make_parser(), ["--merge", str(out), "--output_dir", str(out)]))
    assert written_ids(out) == [f"src/ok{i}" for i in range(4)]


def test_a_torn_failures_file_is_repaired_and_a_corrupt_one_named(images, tiny_teacher_dir, tmp_path):
    source = write_source(tmp_path / "src.jsonl", [plain("ok0"), plain("gone0", "missing.png"),
                                                   plain("gone1", "missing.png"), plain("ok3"), plain("ok4")])
    out = extract(source, images, tiny_teacher_dir, tmp_path / "out", "--num_shards", "2", "--shard_index", "0")
    shard_failures = shard_folder(out, 0, 2) / "failures.jsonl"
    lines = shard_failures.read_text().splitlines()
    assert [json.loads(line)["question_id"] for line in lines] == ["gone0", "gone1"]
    # A kill in the middle of writing the second failure: its line is torn.
    shard_failures.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    extract(source, images, tiny_teacher_dir, out, "--num_shards", "2", "--shard_index", "0")
    assert [entry["question_id"] for entry in read_jsonl(shard_failures)] == ["gone0", "gone1"]
    assert shard_failures.read_text().count("\n") == 2  # the torn line was cut, the record written again
    extract(source, images, tiny_teacher_dir, out, "--num_shards", "2", "--shard_index", "1")
    main(parse_with_config(make_parser(), ["--merge", str(out), "--output_dir", str(out)]))
    assert written_ids(out) == ["src/ok0", "src/ok3", "src/ok4"]
    assert list(failures(out)) == ["gone0", "gone1"]
    # A damaged line that is not the last is not a torn write: an error naming the file and the line.
    shard_failures.write_text("not json\n" + lines[0] + "\n")
    with pytest.raises(ValueError, match=rf"{shard_failures}, line 1: not a JSON record"):
        extract(source, images, tiny_teacher_dir, out, "--num_shards", "2", "--shard_index", "0")


# Finalising streams the chunks


def test_merge_streams_chunks_in_source_order_and_keeps_the_features(tmp_path, monkeypatch):
    """Rows of two shards, written in an order that is not the source's (as a `--retry_failed` rerun writes them),
    merged into files of 7 rows: the same rows in source order, the same features, and a few chunks in memory at
    most, whatever the size of the dataset."""
    hidden = 16
    features = schema.lavit_features(hidden, token_features=True)
    columns = synthetic_lavit_rows(64, hidden, teacher_grids=((8, 8),), token_features=True, seed=3)
    rows = [{name: columns[name][i] for name in columns} | {INDEX: i} for i in range(64)]
    order = list(range(1, 32, 2)) + list(range(0, 32, 2)) + list(range(32, 64))  # shard 0 retried its failures
    for shard, indices in enumerate((order[:32], order[32:])):
        info = {"num_shards": 2, "shard_index": shard, "source_records": 64, "features": features.to_dict()}
        with ShardWriter(shard_folder(tmp_path, shard, 2), features, info, chunk_size=4) as writer:
            for i in indices:
                writer.add(rows[i])
    chunks = sorted(tmp_path.glob(f"{CHUNKS_DIR}/*/chunk-*.parquet"))
    chunk_bytes = max(pq.read_table(path).nbytes for path in chunks)
    dataset_bytes = sum(pq.read_table(path).nbytes for path in chunks)

    peak = []
    write_table = datasets.arrow_writer.ParquetWriter.write_table

    def measured(self, table, *args, **kwargs):
        peak.append(pa.total_allocated_bytes())
        return write_table(self, table, *args, **kwargs)

    monkeypatch.setattr(datasets.arrow_writer.ParquetWriter, "write_table", measured)
    entries = chunk_order([shard_folder(tmp_path, 0, 2), shard_folder(tmp_path, 1, 2)])
    assert [entry[0] for entry in entries] == list(range(64))
    files = write_final(tmp_path, entries, features, rows_per_file=7)
    monkeypatch.undo()
    assert [f["rows"] for f in files] == [7] * 9 + [1]
    assert [f["path"] for f in files][0] == "data/train-00000-of-00010.parquet"
    merged = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in (tmp_path / "data").glob("*.parquet")),
                                   split="train")
    assert merged.features == features
    expected = datasets.Dataset.from_list([{k: v for k, v in row.items() if k != INDEX} for row in rows],
                                          features=features)
    undecoded = datasets.Image(decode=False)
    merged, expected = (ds.cast_column(schema.IMAGE, undecoded) for ds in (merged, expected))
    assert merged.to_list() == expected.to_list()
    # 16 chunks went through memory one at a time (reading them all at once would hold the whole dataset).
    assert max(peak) < 4 * chunk_bytes < dataset_bytes / 2


# Output folder problems are found first and named


def test_an_unwritable_output_folder_is_named_before_the_teacher_loads(images, tmp_path, monkeypatch):
    source = write_source(tmp_path / "src.jsonl", [plain("ok0")])
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(OSError, match=rf"the output folder cannot be written .*'{tmp_path / 'file' / 'out'}'"):
        extract(source, images, tmp_path / "no-teacher", tmp_path / "file" / "out")

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    opened = os.open

    def refuse_writes(path, flags, *args, **kwargs):  # a read-only file system under `read_only`
        if str(path).startswith(str(read_only)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return opened(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_writes)
    with pytest.raises(OSError, match=rf"cannot be written \(Read-only file system\).*'{read_only}'") as error:
        extract(source, images, tmp_path / "no-teacher", read_only)
    assert error.value.errno == errno.EROFS


def test_too_little_free_space_is_refused_before_the_teacher_loads(images, tiny_teacher_dir, tmp_path, monkeypatch):
    source = write_source(tmp_path / "src.jsonl", [plain("ok0"), plain("ok1", "wide.png")])
    image_bytes = (images / "a.png").stat().st_size + (images / "wide.png").stat().st_size
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12, image_bytes - 1))
    monkeypatch.setattr(extraction, "load_teacher", lambda *args: pytest.fail("the teacher loaded first"))
    with pytest.raises(OSError, match=r"needs at least .* of 2 records\) but its file system has .* free") as error:
        extract(source, images, tiny_teacher_dir, tmp_path / "out")
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(tmp_path / "out")


def test_a_full_disk_names_the_file_and_a_rerun_loses_nothing(images, tiny_teacher_dir, tmp_path, monkeypatch):
    source = write_source(tmp_path / "src.jsonl", [plain(f"ok{i}") for i in range(5)])
    out = tmp_path / "out"
    write_table = datasets.arrow_writer.ParquetWriter.write_table
    calls = []

    def disk_full_after_first_chunk(self, table, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_table(self, table, *args, **kwargs)

    monkeypatch.setattr(datasets.arrow_writer.ParquetWriter, "write_table", disk_full_after_first_chunk)
    chunk = shard_folder(out, 0, 1) / "chunk-000001.parquet"
    with pytest.raises(OSError, match=rf"No space left on device \(while trying to write\): '{chunk}'") as error:
        extract(source, images, tiny_teacher_dir, out)
    assert error.value.errno == errno.ENOSPC
    # The chunk before is whole, and no half-written file is left behind.
    assert sorted(p.name for p in shard_folder(out, 0, 1).iterdir()) == [".lock", "chunk-000000.parquet", "run.json"]
    monkeypatch.undo()
    extract(source, images, tiny_teacher_dir, out)
    assert written_ids(out) == [f"src/ok{i}" for i in range(5)]


# Systemic errors stop the run; only per-sample data errors are failures


def test_out_of_memory_stops_the_run_and_keeps_finished_samples(images, tiny_teacher_dir, tmp_path, monkeypatch):
    source = write_source(tmp_path / "src.jsonl", [plain(f"ok{i}") for i in range(5)])
    out = tmp_path / "out"
    extract_batch = TeacherExtractor.extract_batch
    calls = []

    def out_of_memory_on_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return extract_batch(self, *args, **kwargs)

    monkeypatch.setattr(TeacherExtractor, "extract_batch", out_of_memory_on_third)
    with pytest.raises(torch.OutOfMemoryError):
        extract(source, images, tiny_teacher_dir, out, "--chunk_size", "4", "--extraction_batch_size", "1")
    folder = shard_folder(out, 0, 1)
    assert read_jsonl(folder / "failures.jsonl") == []  # not a sample's fault: nothing recorded as failed
    (chunk,) = folder.glob("chunk-*.parquet")  # the two finished samples, written although the chunk was not full
    assert pq.read_table(chunk).column(schema.ID).to_pylist() == ["src/ok0", "src/ok1"]
    assert not json.loads((folder / "run.json").read_text())["complete"]
    monkeypatch.undo()
    extract(source, images, tiny_teacher_dir, out, "--chunk_size", "4")
    assert written_ids(out) == [f"src/ok{i}" for i in range(5)]


# Options: dataclasses, one spelling of each flag (dashes still read), defaults defined once


def test_options_parse_like_lavit_train(tmp_path):
    underscores = ["--source", "s.jsonl", "--output_dir", "out", "--max_new_tokens", "8", "--do_sample",
                   "--methods", "attention", "gradient", "--attention_layers", "-1", "--merge", "a", "b"]
    dashes = [flag.replace("_", "-") if flag.startswith("--") else flag for flag in underscores]
    options = ExtractOptions.from_namespace(make_parser().parse_args(underscores))
    assert options == ExtractOptions.from_namespace(make_parser().parse_args(dashes))
    assert options.generation.settings() == GenerationSettings(max_new_tokens=8, do_sample=True)
    assert options.extraction.settings() == ExtractionSettings(("attention", "gradient"), attention_layers=[-1])
    assert options.output.merge == ["a", "b"] and options.data.source == "s.jsonl"
    defaults = ExtractOptions()
    assert defaults.generation.settings() == GenerationSettings()
    assert defaults.extraction.settings() == ExtractionSettings()
    config = tmp_path / "extract.yaml"
    config.write_text(yaml.safe_dump({"max-new-tokens": 16, "chunk_size": 8, "methods": ["gradient"]}))
    options = ExtractOptions.from_namespace(parse_with_config(make_parser(), ["--config", str(config),
                                                                              "--chunk_size", "4"]))
    assert (options.generation.max_new_tokens, options.output.chunk_size) == (16, 4)
    assert options.extraction.methods == ["gradient"]
    with pytest.raises(ValueError, match="--box_filter_method attention is not among --methods"):
        ExtractOptions.from_namespace(make_parser().parse_args(["--methods", "gradient", "--min_box_mass", "0.1"]))
