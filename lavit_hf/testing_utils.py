"""Synthetic LaViT datasets (random images and teacher targets in the real schema) for tests, smoke runs and the
training-step benchmark. Nothing here is a stand-in for real extraction: it only exercises the data path."""

from collections.abc import Sequence

import datasets
import numpy as np
from PIL import Image

from lavit_hf import schema


WORDS = ("red", "green", "blue", "square", "circle", "left", "right", "top", "bottom", "small", "large", "two")


def synthetic_lavit_rows(
    num_rows: int,
    teacher_hidden_size: int,
    image_sizes: Sequence[tuple[int, int]] = ((56, 56), (112, 84)),
    teacher_grids: Sequence[tuple[int, int]] = ((2, 2), (3, 5)),
    answer_words: int = 3,
    token_features: bool = False,
    seed: int = 0,
) -> dict[str, list]:
    """Columns of `num_rows` synthetic rows, cycling through `image_sizes` (width, height) and `teacher_grids`.

    Args:
        num_rows (`int`): number of rows.
        teacher_hidden_size (`int`): D, the width of `vtop` (and `vtop_tokens`).
        image_sizes (`Sequence[tuple[int, int]]`): image (width, height) of each row, cycled.
        teacher_grids (`Sequence[tuple[int, int]]`): the teacher's merged grid (h, w) of each row, cycled; choose some
            that differ from the student's grid to exercise resampling.
        answer_words (`int`): words per answer.
        token_features (`bool`): whether to add `vtop_tokens`.
        seed (`int`): seeds everything.
    """
    rng = np.random.default_rng(seed)
    columns: dict[str, list] = {name: [] for name in schema.lavit_features(teacher_hidden_size, token_features)}
    for index in range(num_rows):
        width, height = image_sizes[index % len(image_sizes)]
        grid_h, grid_w = teacher_grids[index % len(teacher_grids)]
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        trajectory = rng.dirichlet(np.full(grid_h * grid_w, 0.5)).astype(np.float32)
        vtop_tokens = rng.standard_normal((grid_h * grid_w, teacher_hidden_size)).astype(np.float16)
        answer = " ".join(rng.choice(WORDS, size=answer_words))
        row = {
            schema.ID: f"synthetic-{index}",
            schema.QUESTION_ID: str(index),
            schema.SOURCE: "synthetic",
            schema.IMAGE: Image.fromarray(pixels),
            schema.IMAGE_SIZE: [width, height],
            schema.QUESTION: f"Question {index}: what is {rng.choice(WORDS)}?",
            schema.ANSWER: answer,
            schema.BBOX: [],
            schema.TEACHER_RESPONSE: answer,
            schema.TEACHER_RESPONSE_STEPS: [answer],
            schema.TEACHER_FAMILY: "qwen2_5_vl",
            schema.TEACHER_GRID: [grid_h, grid_w],
            schema.VTOP: vtop_tokens.astype(np.float32).mean(axis=0).tolist(),
            schema.TRAJECTORY_LAYERS: [0],
            schema.TRAJECTORY_SPAN: [0, 1],
            schema.TRAJECTORY_ATTENTION: trajectory.tolist(),
            schema.TRAJECTORY_STEPS_ATTENTION: [trajectory.tolist()],
        }
        if token_features:
            row[schema.VTOP_TOKENS] = vtop_tokens
        for name in columns:
            columns[name].append(row[name])
    return columns


def synthetic_lavit_dataset(num_rows: int, teacher_hidden_size: int, **kwargs) -> datasets.Dataset:
    """`synthetic_lavit_rows` as a `datasets.Dataset` with the real LaViT features (`schema.lavit_features`)."""
    features = schema.lavit_features(teacher_hidden_size, kwargs.get("token_features", False))
    return datasets.Dataset.from_dict(synthetic_lavit_rows(num_rows, teacher_hidden_size, **kwargs), features=features)


__all__ = ["synthetic_lavit_dataset", "synthetic_lavit_rows"]
