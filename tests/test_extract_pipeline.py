"""`lavit extract` end to end on a tiny teacher: dataset, failures, strict, resume after a kill, shards, box filter
and help."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from extracted_rows import assert_rows_match, load_rows
from PIL import Image

from datasets_scripts.extract import ExtractionFailure, main, make_parser
from datasets_scripts.writer import CHUNKS_DIR
from lavit_hf import schema
from lavit_hf.arguments import parse_with_config


REPO_ROOT = Path(__file__).resolve().parents[1]
SIZES = [(140, 84), (84, 84), (112, 56), (56, 112), (98, 70), (70, 98), (84, 140)]


def viscot(qid, image, question="What is in the corner?", answer="A square."):
    return {
        "question_id": qid, "image": [image, f"{image}###[1, 2, 3, 4]"], "dataset": "viscot",
        "conversations": [
            {"from": "human", "value": f"<image>\n{question} Please provide the bounding box coordinate of the region "
             "that can help you answer the question better."},
            {"from": "gpt", "value": "[0.1, 0.3, 0.5, 0.7]"},
            {"from": "human", "value": "<image>"},
            {"from": "gpt", "value": answer},
        ],
    }


@pytest.fixture(scope="module")
def workspace(module_tmp_dir):
    root = module_tmp_dir("extract")
    (root / "images").mkdir()
    generator = torch.Generator().manual_seed(0)
    for i, (w, h) in enumerate(SIZES):
        pixels = torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(root / "images" / f"im{i}.png")
    (root / "images" / "broken.png").write_bytes(b"not a png")
    records = [viscot(f"q{i}", f"im{i}.png") for i in range(len(SIZES))]
    records[2] = viscot("q2", "missing.png")
    records[4] = viscot("q4", "broken.png")
    records[5] = viscot("q5", "im5.png", question="")
    records[6]["conversations"][3]["value"] = ""
    records.append(viscot("q7", "im0.png", question="Describe it."))
    records.append(viscot("q8", "im3.png", question="How many?"))
    (root / "viscot.json").write_text(json.dumps(records))
    return root


def run(workspace, teacher_dir, out, *extra):
    argv = ["--source", str(workspace / "viscot.json"), "--image-root", str(workspace / "images"),
            "--teacher", str(teacher_dir), "--output-dir", str(out), "--max-new-tokens", "6",
            "--generation-batch-size", "2", "--chunk-size", "2", "--methods", "attention", "gradient",
            "--split-steps", "sentence", "--token-features", *extra]
    main(parse_with_config(make_parser(), argv))
    return out


def rows(folder) -> list[dict]:
    return load_rows(folder)


@pytest.fixture(scope="module")
def reference(workspace, tiny_teacher_dir):
    """One uninterrupted, single-process run."""
    return run(workspace, tiny_teacher_dir, workspace / "reference")


def test_dataset_loads_with_declared_features(reference, tiny_teacher_pair):
    ds = datasets.load_dataset(str(reference), split="train")
    hidden = tiny_teacher_pair[0].config.text_config.hidden_size
    methods = ("attention", "gradient")
    assert ds.features == schema.lavit_features(hidden, token_features=True, trajectory_methods=methods)
    assert ds[schema.ID] == ["viscot/q0", "viscot/q1", "viscot/q3", "viscot/q7", "viscot/q8"]  # source order
    row = ds.with_format("numpy")[0]
    h, w = row[schema.TEACHER_GRID]
    # numpy/torch formatting upcasts floats (docs/pitfalls.md, datasets); the stored type is the declared float16
    # Array2D.
    assert row[schema.VTOP_TOKENS].shape == (h * w, hidden)
    assert "halffloat" in str(ds.data.table.schema.field(schema.VTOP_TOKENS).type.storage_dtype)
    assert abs(row[schema.TRAJECTORY_ATTENTION].sum() - 1) < 1e-5
    assert abs(row[schema.TRAJECTORY_GRADIENT].sum() - 1) < 1e-5
    assert len(row[schema.TRAJECTORY_STEPS_ATTENTION]) == len(row[schema.TEACHER_RESPONSE_STEPS])
    assert list(row[schema.IMAGE_SIZE]) == list(SIZES[0]) and ds[0][schema.IMAGE].size == SIZES[0]
    assert list(row[schema.TRAJECTORY_LAYERS]) == [0, 1]
    # the stored parquet rows are exactly what load_dataset returns
    direct = datasets.Dataset.from_parquet(sorted(str(p) for p in (reference / "data").glob("*.parquet")))
    assert direct[schema.ID] == ds[schema.ID]


def test_failures_card_and_manifest(reference):
    failures = [json.loads(line) for line in (reference / "failures.jsonl").read_text().splitlines()]
    reasons = {f["question_id"]: f["reason"] for f in failures}
    assert reasons == {"q2": "missing image", "q4": "unreadable image", "q5": "empty question", "q6": "no answer"}
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["counts"]["written"] == 5 and manifest["counts"]["failed"] == 4
    assert manifest["counts"]["records"] == 9 and manifest["generation"]["repetition_penalty"] == 1.05
    assert [f["rows"] for f in manifest["files"]] == [5]
    card = (reference / "README.md").read_text()
    for needle in ("Processor pixel limits: min 3136, max 50176", "trajectory_gradient", "| written | 5 |",
                   "greedy, repetition penalty 1.05", "lavit extract --source", "path: data/train-*"):
        assert needle in card


def test_strict_stops_at_first_bad_record(workspace, tiny_teacher_dir, tmp_path):
    with pytest.raises(ExtractionFailure, match=r"record 2 \(question_id='q2'\): missing image"):
        run(workspace, tiny_teacher_dir, tmp_path / "strict", "--strict")


# SIGKILL the process right after its first chunk lands (a crash at the worst moment: samples in flight, no cleanup).
KILL_AFTER_FIRST_CHUNK = """
import os, signal, sys
from datasets_scripts.writer import ShardWriter
from lavit_cli.cli import main

flush = ShardWriter.flush
def flush_then_die(self):
    flush(self)
    if self.chunks_written:
        os.kill(os.getpid(), signal.SIGKILL)
ShardWriter.flush = flush_then_die
main(sys.argv[1:])
"""


def test_resume_after_kill_equals_uninterrupted(workspace, tiny_teacher_dir, reference, tmp_path):
    out = tmp_path / "killed"
    argv = ["-c", KILL_AFTER_FIRST_CHUNK, "extract",
            "--source", str(workspace / "viscot.json"), "--image-root", str(workspace / "images"),
            "--teacher", str(tiny_teacher_dir), "--output-dir", str(out), "--max-new-tokens", "6",
            "--generation-batch-size", "2", "--chunk-size", "2", "--methods", "attention", "gradient",
            "--split-steps", "sentence", "--token-features"]
    killed = subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    chunks = list((out / CHUNKS_DIR).glob("*/chunk-*.parquet"))
    assert len(chunks) == 1 and not (out / "data").exists()
    run(workspace, tiny_teacher_dir, out)
    # The resumed run batches the rest of the interrupted block without the finished samples: equal up to float
    # rounding.
    assert_rows_match(rows(out), rows(reference))
    assert (out / "failures.jsonl").read_text() == (reference / "failures.jsonl").read_text()


def test_two_shards_merged_equal_one_process(workspace, tiny_teacher_dir, reference, tmp_path):
    out = tmp_path / "sharded"
    for index in (1, 0):
        run(workspace, tiny_teacher_dir, out, "--num-shards", "2", "--shard-index", str(index))
    assert not (out / "data").exists()  # shards alone never finalise
    main(parse_with_config(make_parser(), ["--merge", str(out), "--output-dir", str(out)]))
    # Shard boundaries cut the extraction batches elsewhere than one process does: equal up to float rounding.
    assert_rows_match(rows(out), rows(reference))
    assert (out / "failures.jsonl").read_text() == (reference / "failures.jsonl").read_text()


def test_merge_refuses_missing_shards(workspace, tiny_teacher_dir, tmp_path):
    out = run(workspace, tiny_teacher_dir, tmp_path / "half", "--num-shards", "2", "--shard-index", "0")
    with pytest.raises(ValueError, match="Expected shards 0..1"):
        main(parse_with_config(make_parser(), ["--merge", str(out), "--output-dir", str(out)]))


def test_box_filter_drops_samples_outside_the_box(workspace, tiny_teacher_dir, reference, tmp_path):
    out = run(workspace, tiny_teacher_dir, tmp_path / "filtered", "--min-box-mass", "0.2")
    filtered = [json.loads(line) for line in (out / "filtered.jsonl").read_text().splitlines()]
    kept = rows(out)
    assert len(kept) + len(filtered) == 5
    assert all(f["box_mass"] < 0.2 for f in filtered)
    from lavit_hf.grids import box_mass

    for row in kept:
        assert box_mass(row[schema.TRAJECTORY_ATTENTION], row[schema.TEACHER_GRID], row[schema.IMAGE_SIZE],
                        row[schema.BBOX]) >= 0.2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["filtered"] == len(filtered) and manifest["min_box_mass"] == 0.2


def test_help_documents_every_option():
    result = subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "lavit"), "extract", "--help"], capture_output=True,
                            text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    for action in make_parser()._actions:
        for flag in action.option_strings:
            assert flag in result.stdout
        assert action.help, f"{action.option_strings} has no help"



def test_same_named_folders_do_not_share_a_load_dataset_cache(workspace, tiny_teacher_dir, reference):
    """`load_dataset(folder)` caches by the folder's name and its card's YAML: a second dataset in a folder of the
    same name must load its own rows, not the first's (the card carries a content fingerprint)."""
    first = run(workspace, tiny_teacher_dir, workspace / "one" / "train", "--limit", "3")
    second = run(workspace, tiny_teacher_dir, workspace / "two" / "train", "--limit", "1")
    assert len(rows(first)) == 2 and len(rows(second)) == 1
