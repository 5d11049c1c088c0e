"""`lavit extract --push-to-hub` against the in-process fake Hub (tests/fake_hub.py), loaded back with
`load_dataset`; the same fake Hub also round-trips a model checkpoint, for the trainer's tests."""

import json
import subprocess
import sys
from pathlib import Path

from fake_hub import fake_hub_env


REPO_ROOT = Path(__file__).resolve().parents[1]

PUSH_AND_LOAD = """
import json, sys
import datasets
from lavit_cli.cli import main
from lavit_hf import schema
main(sys.argv[1:])
ds = datasets.load_dataset("fake-user/lavit-tiny", split="train")
local = datasets.load_dataset(sys.argv[sys.argv.index("--output-dir") + 1], split="train")
cast = lambda d: d.cast_column(schema.IMAGE, datasets.Image(decode=False)).to_list()
same_features = ds.features == local.features
print("RESULT", json.dumps({"rows": ds.num_rows, "same": cast(ds) == cast(local), "features": same_features}))
"""

MODEL_ROUND_TRIP = """
import json, torch
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
from lavit_hf import build_tiny_qwen2_5_vl
model, processor = build_tiny_qwen2_5_vl(seed=3)
model.push_to_hub("fake-user/tiny-teacher")
processor.push_to_hub("fake-user/tiny-teacher")
loaded = Qwen2_5_VLForConditionalGeneration.from_pretrained("fake-user/tiny-teacher")
same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
processor_class = type(AutoProcessor.from_pretrained("fake-user/tiny-teacher")).__name__
print("RESULT", json.dumps({"same": same, "processor": processor_class}))
"""


def run_with_fake_hub(root: Path, code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "fake_hub.py"), "--root", str(root), "-c", code,
                             *args], env=fake_hub_env(root), cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def test_push_dataset_and_load_back(tmp_path, tiny_teacher_dir):
    from PIL import Image

    (tmp_path / "images").mkdir()
    for i, size in enumerate([(84, 56), (56, 84)]):
        Image.effect_noise(size, 60 + i).convert("RGB").save(tmp_path / "images" / f"{i}.png")
    source = tmp_path / "plain.jsonl"
    source.write_text("".join(json.dumps({"image": f"{i}.png", "question": "What?", "answer": "Noise."}) + "\n"
                              for i in range(2)))
    out = tmp_path / "out"
    result = run_with_fake_hub(
        tmp_path / "hub", PUSH_AND_LOAD, "extract", "--source", str(source), "--image-root", str(tmp_path / "images"),
        "--teacher", str(tiny_teacher_dir), "--output-dir", str(out), "--max-new-tokens", "4",
        "--push-to-hub", "fake-user/lavit-tiny",
    )
    assert result == {"rows": 2, "same": True, "features": True}
    repo = tmp_path / "hub" / "repos" / "dataset" / "fake-user" / "lavit-tiny"
    files = sorted(str(p.relative_to(repo / "files")) for p in (repo / "files").rglob("*") if p.is_file())
    assert files == ["README.md", "data/train-00000-of-00001.parquet", "failures.jsonl", "filtered.jsonl",
                     "manifest.json"]
    assert "data/train-00000-of-00001.parquet" in json.loads((repo / "meta.json").read_text())["lfs"]  # went by LFS
    assert 'load_dataset("fake-user/lavit-tiny", split="train")' in (repo / "files" / "README.md").read_text()


def test_fake_hub_round_trips_a_model(tmp_path):
    assert run_with_fake_hub(tmp_path / "hub", MODEL_ROUND_TRIP) == {"same": True, "processor": "Qwen2_5_VLProcessor"}
