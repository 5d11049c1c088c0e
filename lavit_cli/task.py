"""A procedurally generated visual question-answering task, deterministic by seed: the demo's data and benchmark.

Each image holds two or three shapes (circle, square, triangle) of distinct colours at distinct places and sizes.
Questions need the image: the colour of the largest shape, how many shapes there are, the colour of the shape marked
with a black dot, the colour of a named shape, the shape of a named colour, which of two shapes is larger, and the
colour of the shape left of another. Every
sample records the box of the object its answer is about (all the shapes for a count), normalised to the image padded
to a square (as Visual-CoT boxes are, docs/method.md section 5), so the demo can check where a trajectory looks.

`DEFAULT_QUESTION_TYPES` are the two scene-level questions (an attention spread over the shapes answers both).
`colour_of_marked` needs one object, found by what the image shows (a black dot) rather than by a word, which a tiny
model learns in minutes: the demo's distillation task. The other four bind a word of the question to one shape of the
image, which a tiny model does not learn in minutes on a CPU.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

import datasets
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from evaluate_metrics.shapes.shapes import ANSWER_VOCABULARY
from lavit_hf.grids import box_from_pixels


COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 40)}
SHAPES = ("circle", "square", "triangle")
COUNTS = {2: "two", 3: "three"}
QUESTION_TYPES = (
    "colour_of_largest",
    "count",
    "colour_of_marked",
    "colour_of_shape",
    "shape_of_colour",
    "larger",
    "left_of",
)
DEFAULT_QUESTION_TYPES = ("colour_of_largest", "count")

SYNTHETIC_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "question_type": datasets.Value("string"),
        "bbox": datasets.List(datasets.Value("float32")),
    }
)


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    centre: tuple[int, int]
    radius: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        x, y = self.centre
        return (x - self.radius, y - self.radius, x + self.radius, y + self.radius)


def draw(shapes: list[Shape], size: int, marked: Shape | None = None) -> Image.Image:
    """The shapes on a light background; `marked` carries a black dot at its centre."""
    image = Image.new("RGB", (size, size), (245, 245, 245))
    canvas = ImageDraw.Draw(image)
    for shape in shapes:
        x0, y0, x1, y1 = shape.box
        fill = COLOURS[shape.colour]
        if shape.kind == "circle":
            canvas.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape.kind == "square":
            canvas.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            canvas.polygon([(shape.centre[0], y0), (x1, y1), (x0, y1)], fill=fill)
    if marked is not None:
        x, y = marked.centre
        # The dot sits where every shape is filled (a triangle's centre included) and spans several pixels.
        dot = max(3, marked.radius // 3)
        canvas.ellipse((x - dot, y - dot + marked.radius // 4, x + dot, y + dot + marked.radius // 4), fill=(0, 0, 0))
    return image


def place_shapes(rng: random.Random, size: int, count: int) -> list[Shape]:
    """`count` shapes of distinct kinds and colours in distinct columns (so "left of" is well defined)."""
    kinds = rng.sample(SHAPES, count)
    colours = rng.sample(list(COLOURS), count)
    columns = rng.sample(range(count), count)
    radii = rng.sample(range(size // 14, size // 6 + 1), count)
    shapes = []
    for kind, colour, column, radius in zip(kinds, colours, columns, radii, strict=True):
        width = size // count
        x = column * width + width // 2
        y = rng.randint(radius + 1, size - radius - 2)
        shapes.append(Shape(kind, colour, (x, y), radius))
    return shapes


def ask(
    rng: random.Random, shapes: list[Shape], question_types: tuple[str, ...] = DEFAULT_QUESTION_TYPES
) -> tuple[str, str, str, tuple[int, int, int, int]]:
    """A question about two or three `shapes`: (question type, question, answer, the pixel box the answer is
    about)."""
    kind = rng.choice(question_types)
    target = rng.choice(shapes)
    if kind == "colour_of_largest":
        largest = max(shapes, key=lambda s: s.radius)
        return kind, "What colour is the largest shape?", largest.colour, largest.box
    if kind == "count":
        boxes = [shape.box for shape in shapes]
        union = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
        return kind, "How many shapes are there?", COUNTS[len(shapes)], union
    if kind == "colour_of_marked":
        return kind, "What colour is the marked shape?", target.colour, target.box
    if kind == "colour_of_shape":
        return kind, f"What colour is the {target.kind}?", target.colour, target.box
    if kind == "shape_of_colour":
        return kind, f"What shape is {target.colour}?", target.kind, target.box
    first, second = rng.sample(shapes, 2)
    if kind == "larger":
        larger = max(first, second, key=lambda s: s.radius)
        return kind, f"Which is larger, the {first.kind} or the {second.kind}?", larger.kind, larger.box
    if kind == "left_of":
        right, left = sorted((first, second), key=lambda s: -s.centre[0])
        return kind, f"What colour is the shape left of the {right.kind}?", left.colour, left.box
    raise ValueError(f"Unknown question type {kind!r}: expected one of {QUESTION_TYPES}.")


def generate_samples(
    count: int,
    seed: int,
    image_size: int = 112,
    split: str = "train",
    question_types: tuple[str, ...] = DEFAULT_QUESTION_TYPES,
) -> list[dict]:
    """`count` samples of the task with questions of `question_types`, the same for the same arguments."""
    unknown = sorted(set(question_types) - set(QUESTION_TYPES))
    if unknown or not question_types:
        raise ValueError(f"Question types {unknown or '(none)'}: expected some of {QUESTION_TYPES}.")
    rng = random.Random(f"{seed}-{split}")
    samples = []
    for index in range(count):
        shapes = place_shapes(rng, image_size, rng.choice(tuple(COUNTS)))
        question_type, question, answer, box = ask(rng, shapes, tuple(question_types))
        marked = next(shape for shape in shapes if shape.box == box) if question_type == "colour_of_marked" else None
        samples.append(
            {
                "id": f"{split}-{index:06d}",
                "image": draw(shapes, image_size, marked),
                "question": question,
                "answer": answer,
                "question_type": question_type,
                "bbox": box_from_pixels(box, (image_size, image_size)),
            }
        )
    return samples


def write_jsonl_source(samples: list[dict], folder: Path) -> Path:
    """Write samples as a plain source for `lavit extract`: `images/<id>.png` and `source.jsonl` rows with
    `question_id`, `image` (relative path), `question`, `answer`, `bbox`."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    path = folder / "source.jsonl"
    with path.open("w") as handle:
        for sample in tqdm(samples, desc="writing images", unit="image"):
            sample["image"].save(images / f"{sample['id']}.png")
            row = {key: sample[key] for key in ("question", "answer", "bbox", "question_type")}
            handle.write(json.dumps({"question_id": sample["id"], "image": f"images/{sample['id']}.png", **row}) + "\n")
    return path


def synthetic_dataset(samples: list[dict]) -> datasets.Dataset:
    """The samples as a `datasets.Dataset` with `SYNTHETIC_FEATURES` (the held-out benchmark's format)."""
    columns = {name: [sample[name] for sample in samples] for name in SYNTHETIC_FEATURES}
    return datasets.Dataset.from_dict(columns, features=SYNTHETIC_FEATURES)


__all__ = [
    "ANSWER_VOCABULARY",
    "DEFAULT_QUESTION_TYPES",
    "QUESTION_TYPES",
    "SYNTHETIC_FEATURES",
    "generate_samples",
    "synthetic_dataset",
    "write_jsonl_source",
]
