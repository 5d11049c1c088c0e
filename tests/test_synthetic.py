"""The demo's procedurally generated task and the projector calibration of its tiny models."""

import random

import pytest
import torch

from lavit_cli.task import (
    ANSWER_VOCABULARY,
    DEFAULT_QUESTION_TYPES,
    QUESTION_TYPES,
    Shape,
    ask,
    generate_samples,
)
from lavit_hf.tiny import build_tiny_qwen2_5_vl, calibrate_image_features


SCENE = [
    Shape("circle", "red", (20, 50), 10),
    Shape("square", "blue", (60, 30), 16),
    Shape("triangle", "green", (95, 80), 12),
]


@pytest.mark.parametrize(
    ("question_type", "answer", "box"),
    [
        ("colour_of_largest", "blue", (44, 14, 76, 46)),
        ("count", "three", (10, 14, 107, 92)),  # every shape: the union of their boxes
    ],
)
def test_scene_level_questions_answer_from_the_scene(question_type, answer, box):
    kind, question, got_answer, got_box = ask(random.Random(0), SCENE, (question_type,))
    assert (kind, got_answer, got_box) == (question_type, answer, box)
    assert question.endswith("?")


@pytest.mark.parametrize("question_type", QUESTION_TYPES[2:])
def test_object_questions_name_an_object_and_its_box(question_type):
    for seed in range(20):
        kind, question, answer, box = ask(random.Random(seed), SCENE, (question_type,))
        about = next(shape for shape in SCENE if shape.box == box)
        expected = {
            "colour_of_marked": about.colour,
            "colour_of_shape": about.colour,
            "shape_of_colour": about.kind,
            "larger": about.kind,
            "left_of": about.colour,
        }[kind]
        assert answer == expected and answer in ANSWER_VOCABULARY
        if kind == "larger":  # the larger of the two shapes named
            named = [shape for shape in SCENE if shape.kind in question]
            assert about is max(named, key=lambda shape: shape.radius)


def test_the_marked_shape_and_only_it_carries_the_black_dot():
    for sample in generate_samples(20, seed=1, image_size=168, split="test", question_types=("colour_of_marked",)):
        pixels = sample["image"].load()
        width, height = sample["image"].size
        black = [(x, y) for x in range(width) for y in range(height) if pixels[x, y] == (0, 0, 0)]
        assert black, sample["id"]
        x0, y0, x1, y1 = (v * width for v in sample["bbox"])  # a square image: the padded square is the image
        assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in black), sample["id"]


def test_generation_is_deterministic_and_checks_its_types():
    first = generate_samples(12, seed=3, image_size=112, split="test")
    again = generate_samples(12, seed=3, image_size=112, split="test")
    assert [s["question"] for s in first] == [s["question"] for s in again]
    assert all(a["image"].tobytes() == b["image"].tobytes() for a, b in zip(first, again, strict=True))
    assert {s["question_type"] for s in first} <= set(DEFAULT_QUESTION_TYPES)
    assert all(0.0 <= value <= 1.0 for s in first for value in s["bbox"])
    other = generate_samples(12, seed=3, image_size=112, split="train")
    assert [s["question"] for s in other] != [s["question"] for s in first] or any(
        a["image"].tobytes() != b["image"].tobytes() for a, b in zip(first, other, strict=True)
    )
    with pytest.raises(ValueError, match="Question types"):
        generate_samples(2, seed=0, question_types=("colour_of_sky",))


def test_calibration_standardises_image_features_and_changes_nothing_else():
    model, processor = build_tiny_qwen2_5_vl(seed=0, min_pixels=112 * 112, max_pixels=112 * 112)
    images = [sample["image"] for sample in generate_samples(24, seed=0)]
    text = processor(text=["How many shapes are there?"], return_tensors="pt")
    with torch.no_grad():
        text_logits = model(**text).logits
    calibrate_image_features(model, processor, images)
    inputs = processor.image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        features = torch.cat(list(model.model.get_image_features(**inputs).pooler_output))
        assert torch.equal(model(**text).logits, text_logits)
    target_std = model.get_input_embeddings().weight.std()
    torch.testing.assert_close(features.mean(dim=0), torch.zeros(features.shape[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(features.std(dim=0), target_std.expand(features.shape[1]), rtol=1e-3, atol=1e-6)
