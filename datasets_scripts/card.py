"""The dataset card (README.md) and manifest of an extracted LaViT dataset."""

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import datasets
from huggingface_hub import DatasetCard, DatasetCardData

from lavit_hf import schema


logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).with_name("card_template.md")

COLUMN_DESCRIPTIONS = {
    schema.ID: "deterministic key of the sample: `source/question_id`",
    schema.QUESTION_ID: "the record's own id",
    schema.SOURCE: "where the record came from (Visual-CoT `dataset` field, or the source's name)",
    schema.IMAGE: "the image (original file bytes)",
    schema.IMAGE_SIZE: "`[width, height]` of the original image",
    schema.QUESTION: "the question the teacher was asked",
    schema.ANSWER: "the source's reference answer",
    schema.BBOX: "Visual-CoT box `[x1, y1, x2, y2]` normalised to the image padded to a square, or empty",
    schema.TEACHER_RESPONSE: "the teacher's own response",
    schema.TEACHER_RESPONSE_STEPS: "the response split into steps (one step when not split)",
    schema.TEACHER_GRID: "`[h, w]`: the teacher's merged image-token grid",
    schema.VTOP: "mean over image tokens of the last decoder layer's output (before the final norm), D entries",
    schema.VTOP_TOKENS: "the same per image token, `[h * w, D]`",
    schema.TRAJECTORY_ATTENTION: "attention trajectory, `h * w` entries summing to 1",
    schema.TRAJECTORY_GRADIENT: "gradient trajectory, `h * w` entries summing to 1",
    schema.TRAJECTORY_STEPS_ATTENTION: "one attention trajectory per step",
    schema.TRAJECTORY_STEPS_GRADIENT: "one gradient trajectory per step",
    schema.TRAJECTORY_LAYERS: "teacher layers averaged by the attention method (empty without it)",
    schema.TRAJECTORY_SPAN: "`[start, end)` of the response tokens in the teacher's sequence",
}


def _type_name(feature: Any) -> str:
    if isinstance(feature, datasets.Value):
        return feature.dtype
    if isinstance(feature, datasets.Array2D):
        return f"Array2D {feature.shape} {feature.dtype}"
    if isinstance(feature, datasets.List):
        length = "" if feature.length in (None, -1) else f"[{feature.length}]"
        return f"list{length} of {_type_name(feature.feature)}"
    return type(feature).__name__


def column_table(features: datasets.Features) -> list[dict[str, str]]:
    return [
        {"name": name, "type": _type_name(feature), "description": COLUMN_DESCRIPTIONS.get(name, "")}
        for name, feature in features.items()
    ]


def content_fingerprint(info: dict[str, Any]) -> str:
    """sha256 over the final parquet files' own sha256 digests, in order."""
    return hashlib.sha256("".join(entry["sha256"] for entry in info["files"]).encode()).hexdigest()


def write_card(out: Path, features: datasets.Features, info: dict[str, Any], repo_id: str | None = None) -> Path:
    """Render `README.md` from `card_template.md`; its YAML names the parquet files so `load_dataset(out)` reads
    exactly `data/train-*.parquet` (not the working chunks)."""
    card_data = DatasetCardData(
        license=info.get("license"),
        pretty_name=info["pretty_name"],
        tags=["lavit", "distillation", "visual-cot", "vision-language"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        # `load_dataset(folder)` caches by the folder's *name* and a hash of this YAML, so two datasets in folders of
        # the same name would share one cache entry and the second would silently load the first's rows. The
        # content fingerprint in the hashed metadata keeps their caches apart.
        dataset_info={"config_name": "default", "description": f"content sha256 {content_fingerprint(info)}"},
    )
    card = DatasetCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        columns=column_table(features),
        repo_id=repo_id or info["pretty_name"],
        **info,
    )
    path = out / "README.md"
    card.save(path)
    return path


def write_manifest(out: Path, manifest: dict[str, Any]) -> Path:
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return path


__all__ = ["COLUMN_DESCRIPTIONS", "TEMPLATE", "column_table", "write_card", "write_manifest"]
