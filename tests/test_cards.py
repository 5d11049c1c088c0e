"""The model card of a trained student and the dataset card of an extraction, read back with huggingface_hub's
`ModelCard` / `DatasetCard` loaders: the metadata the Hub needs, and no local path anywhere."""

from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, ModelCard

from datasets_scripts.card import column_table, write_card
from lavit_hf import schema
from lavit_hf.testing_utils import synthetic_lavit_dataset
from trainer import LaViTTrainer, LaViTTrainingArguments
from trainer.train import with_target_format


D = 48


def _card(tiny_lavit, tmp_path: Path, **overrides) -> tuple[ModelCard, str]:
    model, processor = tiny_lavit
    args = LaViTTrainingArguments(
        output_dir=str(tmp_path / "run"), min_pixels=3136, max_pixels=50176, report_to="none", use_cpu=True,
        **overrides,
    )  # fmt: skip
    dataset = with_target_format(synthetic_lavit_dataset(2, D))
    trainer = LaViTTrainer(model, args, train_dataset=dataset, processing_class=processor)
    trainer.create_model_card(model_name="run")
    path = tmp_path / "run" / "README.md"
    return ModelCard.load(path), path.read_text()


def test_model_card_of_local_base_and_data(tiny_lavit, tmp_path):
    base, data = tmp_path / "checkpoints" / "qwen-base", tmp_path / "datasets" / "my-lavit-data"
    for folder in (base, data):
        folder.mkdir(parents=True)
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# The base\n")
    card, text = _card(tiny_lavit, tmp_path, model_name_or_path=str(base), dataset_name_or_path=str(data))
    assert card.data.license == "apache-2.0"  # the base model's
    assert card.data.base_model is None and card.data.datasets is None  # metadata names Hub ids only
    assert "`qwen-base` (a local checkpoint)" in text and "`my-lavit-data` (a local dataset)" in text
    assert str(tmp_path) not in text
    assert "trl" not in card.data.tags and "lavit" in card.data.tags
    assert "qwen2_5_vl" in card.data.tags  # the student's family
    assert card.data.pipeline_tag == "image-text-to-text" and card.data.library_name == "transformers"


def test_model_card_of_hub_base_and_data(tiny_lavit, tmp_path):
    card, text = _card(
        tiny_lavit, tmp_path, model_name_or_path="Qwen/Qwen2.5-VL-3B-Instruct",
        dataset_name_or_path="someone/lavit-viscot", license="other",
    )  # fmt: skip
    assert card.data.base_model == "Qwen/Qwen2.5-VL-3B-Instruct" and card.data.datasets == ["someone/lavit-viscot"]
    assert card.data.license == "other"
    assert "[Qwen/Qwen2.5-VL-3B-Instruct](https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct)" in text
    assert "https://huggingface.co/datasets/someone/lavit-viscot" in text


def test_model_card_records_the_method_settings(tiny_lavit, tmp_path):
    _, text = _card(
        tiny_lavit, tmp_path, latent_separator="\n", trajectory_prediction="latent_attention",
        trajectory_attention_layers=[-1], activation_checkpointing=False,
    )  # fmt: skip
    rows = dict(line.strip("|").split("|")[:2] for line in text.splitlines() if line.count("|") == 3)
    rows = {key.strip(" `"): value.strip(" `") for key, value in rows.items()}
    assert rows["latent_separator"] == "'\\n'" and rows["trajectory_prediction"] == "latent_attention"
    assert rows["trajectory_attention_layers"] == "[-1]"


def _extraction_info(tmp_path: Path, written: int, license: str | None) -> dict:
    """What `lavit extract` records about a run (`datasets_scripts.extract.run_info` plus the finalised counts),
    with absolute local paths where a real run has them."""
    source, teacher = tmp_path / "viscot" / "viscot_363k.json", tmp_path / "models" / "Qwen2.5-VL-32B-Instruct"
    return {
        "source": str(source), "image_root": str(source.parent / "images"), "source_name": None,
        "teacher": str(teacher), "teacher_model_type": "qwen2_5_vl", "hidden_size": 5120, "num_layers": 64,
        "layers": [56, 57, 58, 59, 60, 61, 62, 63], "dtype": "bfloat16", "attn_implementation": "sdpa",
        "min_pixels": 200_704, "max_pixels": 4_194_304, "response_from": "teacher", "num_shards": 1,
        "extraction": {"methods": ["attention"], "token_features": False, "split_steps": "none",
                       "gradient_temperature": None},
        "generation": {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.05,
                       "max_new_tokens": 1024, "batch_size": 8},
        "min_box_mass": None, "box_filter_method": "attention", "bbox_frame": "padded_square",
        "counts": {"records": written + 1, "written": written, "failed": 1, "filtered": 0,
                   "failure_reasons": {"missing image": 1}},
        "command": f"lavit extract --source {source} --image-root {source.parent / 'images'} --teacher={teacher} "
                   f"--output-dir {tmp_path / 'out'}",
        "files": [{"path": "data/train-00000-of-00001.parquet", "rows": written, "sha256": "0" * 64}],
        "pretty_name": "lavit-viscot", "license": license, "lavit_version": "0.0.0",
    }  # fmt: skip


@pytest.mark.parametrize(("written", "license", "size"), [(5, None, "n<1K"), (363_000, "apache-2.0", "100K<n<1M")])
def test_dataset_card_metadata_and_no_local_paths(tmp_path, written, license, size):
    out = tmp_path / "out"
    out.mkdir()
    write_card(out, schema.lavit_features(5120), _extraction_info(tmp_path, written, license), repo_id=str(out))
    card = DatasetCard.load(out / "README.md")
    text = (out / "README.md").read_text()
    assert card.data.license == (license or "other")
    assert card.data.task_categories == ["image-text-to-text", "visual-question-answering"]
    assert card.data.size_categories == [size]
    assert card.data.source_datasets == ["viscot_363k.json"]
    assert str(tmp_path) not in text and "https://github.com/)" not in text
    assert "--teacher=Qwen2.5-VL-32B-Instruct" in text and 'load_dataset("out"' in text
    every_column = schema.lavit_features(5120, token_features=True, trajectory_methods=("attention", "gradient"))
    assert [row["name"] for row in column_table(every_column) if not row["description"]] == []
    # A Hub source and repository keep their ids.
    info = {**_extraction_info(tmp_path, written, license), "source": "deepcs233/Visual-CoT"}
    write_card(out, schema.lavit_features(5120), info, repo_id="someone/lavit-viscot")
    card = DatasetCard.load(out / "README.md")
    assert card.data.source_datasets == ["deepcs233/Visual-CoT"]
    assert 'load_dataset("someone/lavit-viscot"' in (out / "README.md").read_text()
