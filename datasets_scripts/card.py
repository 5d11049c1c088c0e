"""The dataset card (README.md) and manifest of an extracted LaViT dataset."""

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

import datasets
from huggingface_hub import DatasetCard, DatasetCardData

from lavit_hf import schema


TEMPLATE = Path(__file__).with_name("card_template.md")
TASK_CATEGORIES = ["image-text-to-text", "visual-question-answering"]
# The Hub's size buckets: (upper bound, label), the last one open.
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))  # fmt: skip

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
    schema.TEACHER_FAMILY: "the teacher's model family, its `model_type` (`qwen2_5_vl`, `qwen3_vl`, `gemma3`, ...)",
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


def size_category(num_rows: int) -> str:
    """The Hub's `size_categories` bucket of a dataset of `num_rows` rows."""
    for bound, label in SIZE_CATEGORIES:
        if num_rows < bound:
            return label
    return "n>100M"


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).expanduser().exists()


def public_name(name: str | None) -> str | None:
    """A Hub id as it is, a local file or folder by its name alone: a published card holds no local path."""
    if not name:
        return name
    return name if _is_hub_id(name) else Path(name).expanduser().resolve().name


def public_command(command: str) -> str:
    """`command` with each absolute local path (`/data/x`, `--opt=/data/x`, `~/x`) cut to its last component."""

    def public(token: str) -> str:
        option, equals, value = token.partition("=") if token.startswith("--") else ("", "", token)
        return option + equals + (Path(value).expanduser().name if value.startswith(("/", "~")) else value)

    return shlex.join(public(token) for token in shlex.split(command))


def write_card(out: Path, features: datasets.Features, info: dict[str, Any], repo_id: str | None = None) -> Path:
    """Render `README.md` from `card_template.md`; its YAML names the parquet files so `load_dataset(out)` reads
    exactly `data/train-*.parquet` (not the working chunks). The metadata has `license` (`other` when none was
    given), `task_categories`, `size_categories` and `source_datasets`; local paths appear by their names only."""
    source = str(info.get("source") or "")
    card_data = DatasetCardData(
        license=info.get("license") or "other",
        pretty_name=info["pretty_name"],
        task_categories=TASK_CATEGORIES,
        size_categories=[size_category(info["counts"]["written"])],
        source_datasets=[source if _is_hub_id(source) else public_name(source)] if source else None,
        tags=["lavit", "distillation", "visual-cot", "vision-language"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        # `load_dataset(folder)` caches by the folder's *name* and a hash of this YAML, so two datasets in folders of
        # the same name would share one cache entry and the second would silently load the first's rows. The
        # content fingerprint in the hashed metadata keeps their caches apart.
        dataset_info={"config_name": "default", "description": f"content sha256 {content_fingerprint(info)}"},
    )
    public = {
        **info,
        "license": info.get("license") or "other",
        "source": public_name(source),
        "teacher": public_name(info.get("teacher")),
        "command": public_command(info["command"]) if info.get("command") else info.get("command"),
    }
    card = DatasetCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        columns=column_table(features),
        repo_id=repo_id if repo_id and _is_hub_id(repo_id) else public_name(repo_id) or info["pretty_name"],
        **{key: value for key, value in public.items() if key != "repo_id"},
    )
    path = out / "README.md"
    card.save(path)
    return path


def write_manifest(out: Path, manifest: dict[str, Any]) -> Path:
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return path


__all__ = [
    "COLUMN_DESCRIPTIONS",
    "TEMPLATE",
    "column_table",
    "public_command",
    "public_name",
    "size_category",
    "write_card",
    "write_manifest",
]
