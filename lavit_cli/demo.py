"""`lavit demo`: a small but faithful replica of LaViT's setting, end to end through the project's own code, and an
equal-budget experiment that says whether the method helps and whether the student uses its latent tokens.

1. Task (`lavit_cli.task`): images of two or three coloured shapes. The distillation task asks the colour
   of the shape marked with a black dot: one object, found by looking. General questions (the colour of the largest
   shape, the number of shapes) are the pre-training of the student base.
2. Teacher: a tiny Qwen2.5-VL, twice as deep as the student and seeing the images at a higher resolution, fine-tuned
   on many fresh samples of the distillation task (about 80% held-out accuracy; chance is 25%).
3. Student base: a smaller tiny Qwen2.5-VL with a short general pre-training of its own (it reads images before any
   LaViT training, as Qwen2.5-VL-3B does), turned into a LaViT student (`<lvr1>..<lvrK>` added, then a newline
   before the answer: `latent_separator`, docs/method.md section 2).
4. Extraction (`lavit extract`): the teacher's answers, V_top and both trajectories (attention and gradient) over a
   distillation set smaller than what the student needs to learn the task from labels alone.
5. Students (`lavit train`): each variant of the experiment (`lavit_cli.experiment.VARIANTS`) at the same budget
   (steps, learning rate, batch, data) for each seed.
6. Evaluation (`lavit eval`'s runner, `evaluate_metrics/shapes`): every student on the held-out items by normal
   decoding, with the latent tokens forced, and forced but masked; a linear probe of the latent tokens' state.
7. Report (`report.md`, `results.json`, figures): accuracies and paired differences with bootstrap intervals over
   seeds and items, stated plainly, including what does not help.

Every step resumes from what an interrupted run left. The tiny models use the real 151k-token Qwen vocabulary, which
dwarfs them (151k x 128 per matrix): their token embeddings and output head are frozen everywhere (given a scale at
which a frozen head can express confident answers), which makes each step several times cheaper on a CPU and changes
nothing the experiment compares.

Example:
    lavit demo --out demo_out                                    # the default experiment, CPU
    lavit demo --out demo_ablation --ablation --seeds 0 1 2      # every variant, 3 seeds
"""

import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lavit_hf.layout import render_prompt, set_pixel_limits

from .experiment import (
    DEFAULT_VARIANTS,
    PAPER_STAGE1_SHARE,
    PAPER_STAGE2_LR_RATIO,
    VARIANTS,
    Budget,
    resolve_variants,
    write_json,
)


logger = logging.getLogger(__name__)

TARGET_TYPES = ("colour_of_marked",)
GENERAL_TYPES = ("colour_of_largest", "count")
TRAJECTORY_METHODS = ("attention", "gradient")
# Standard deviation of the frozen output rows: logits start with a standard deviation near 1.4 at width 128 and a
# tiny model can still reach confident answers by moving its hidden states (the usual 0.02 caps the margin near 2.6).
FROZEN_HEAD_STD = 0.12


@dataclass
class DemoArguments:
    """Options of `lavit demo` (flags as `--name value`; `--config FILE.yaml` sets any of them)."""

    out: str = field(default="demo_out", metadata={"help": "Output folder; a rerun resumes from what is there."})
    device: str = field(default="cpu", metadata={"help": "Torch device for every step (cpu, cuda)."})
    seed: int = field(default=0, metadata={"help": "Seeds the task, the teacher and the student base."})
    seeds: list[int] = field(
        default_factory=lambda: [0, 1], metadata={"help": "Training seeds of every variant (at least 2)."}
    )
    variants: list[str] = field(
        default_factory=lambda: list(DEFAULT_VARIANTS),
        metadata={"help": f"Training recipes compared at an equal budget; known: {', '.join(VARIANTS)}."},
    )
    ablation: bool = field(default=False, metadata={"help": "Run every known variant (overrides --variants)."})
    # Task
    train_size: int = field(default=256, metadata={"help": "Labelled samples of the distillation set."})
    test_size: int = field(default=400, metadata={"help": "Held-out items of the benchmark (never trained on)."})
    # Teacher
    teacher_hidden_size: int = field(default=128, metadata={"help": "Width of the teacher."})
    teacher_layers: int = field(default=4, metadata={"help": "Depth of the teacher."})
    teacher_image_size: int = field(default=168, metadata={"help": "Side of the teacher's images in pixels."})
    teacher_steps: int = field(default=600, metadata={"help": "Fine-tuning steps of the teacher."})
    # Student
    student_hidden_size: int = field(default=128, metadata={"help": "Width of the student."})
    student_layers: int = field(default=2, metadata={"help": "Depth of the student."})
    student_image_size: int = field(default=112, metadata={"help": "Side of the student's images in pixels."})
    pretrain_steps: int = field(default=150, metadata={"help": "General pre-training steps of the student base."})
    num_latent_tokens: int = field(default=4, metadata={"help": "K, latent tokens per answer."})
    latent_separator: str = field(
        default="\n",
        metadata={
            "help": "What follows the latent tokens before the answer. The paper's space merges into the one-word "
            "answer's token, which the last latent token then predicts with the image in view, so neither the "
            "bottleneck nor the mask diagnostic could reach it; a newline is a token of its own (a deviation from "
            "the paper, docs/method.md section 2)."
        },
    )
    student_steps: int = field(default=320, metadata={"help": "Optimiser steps of every student (all stages)."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate of every student."})
    batch_size: int = field(default=16, metadata={"help": "Batch size of every training run."})
    stage1_share: float = field(
        default=PAPER_STAGE1_SHARE, metadata={"help": "Share of a two-stage student's steps in stage 1 (the paper's 0.4)."}
    )
    stage2_learning_rate_ratio: float = field(
        default=PAPER_STAGE2_LR_RATIO,
        metadata={"help": "Stage 2's peak learning rate over stage 1's (the paper's 2e-6 / 5e-6 = 0.4)."},
    )
    trajectory_method: str = field(
        default="gradient",
        metadata={"help": "Teacher trajectory the students learn from.", "choices": TRAJECTORY_METHODS},
    )
    gradient_temperature: float | None = field(
        default=None,
        metadata={
            "help": "Softmax temperature of the teacher's gradient trajectory over its max-normalised magnitudes "
            "(`lavit extract --gradient-temperature`); unset: the magnitudes normalised to sum to 1. A lower "
            "temperature gives a sharper target."
        },
    )
    vtop_normalization: str = field(
        default="none", metadata={"help": "V_top targets as the paper (none) or standardised.", "choices": ("none", "standardize")}
    )
    head_layer: int | None = field(
        default=None,
        metadata={
            "help": "The students' heads read the hidden states after this many decoder layers (what the answer can "
            "attend to) instead of the final ones (the paper's; lavit train --head_layer)."
        },
    )
    vtop_source: str = field(
        default="pooled",
        metadata={
            "help": "V_top targets: the teacher's image features mean-pooled (pooled, the paper's) or pooled with its "
            "trajectory as weights (trajectory: the features of what it looked at; extraction then stores the "
            "token-wise features).",
            "choices": ("pooled", "trajectory"),
        },
    )
    response_from: str = field(
        default="teacher",
        metadata={
            "help": "The response the trajectories are read over: the teacher's own (generated), or the reference "
            "answer (for a teacher too briefly trained to answer, as in a smoke run).",
            "choices": ("teacher", "answer"),
        },
    )
    eval_batch_size: int = field(default=64, metadata={"help": "Items per generate call."})

    def __post_init__(self):
        if self.ablation:
            self.variants = list(VARIANTS)
        resolve_variants(self.variants)
        if len(self.seeds) < 2:
            raise ValueError("Intervals over seeds need at least 2 --seeds.")
        if "ce_only" not in self.variants:
            raise ValueError("The experiment compares every variant with ce_only: keep it in --variants.")


def make_parser():
    from transformers import HfArgumentParser

    return HfArgumentParser(DemoArguments, description=__doc__)


# 1. Task --------------------------------------------------------------------------------------------------------------


def task_splits(args: DemoArguments) -> dict[str, list[dict[str, Any]]]:
    """The samples of every split, drawn at the teacher's resolution (the student's processor downsizes them)."""
    from .task import generate_samples

    size = args.teacher_image_size
    counts_and_types = {
        "teacher": (args.teacher_steps * args.batch_size, TARGET_TYPES),
        "pretrain": (args.pretrain_steps * args.batch_size, GENERAL_TYPES),
        "train": (args.train_size, TARGET_TYPES),
        "test": (args.test_size, TARGET_TYPES),
    }
    return {
        split: generate_samples(count, args.seed, size, split, types) for split, (count, types) in counts_and_types.items()
    }


# 2-3. Teacher and student base ------------------------------------------------------------------------------------


def plain_batch(processor, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Chat-formatted question + answer, labels on the answer only (plain Qwen2.5-VL fine-tuning)."""
    prompts = [render_prompt(processor, s["question"]) for s in samples]
    images = [s["image"] for s in samples]
    processor.tokenizer.padding_side = "right"
    inputs = processor(
        text=[p + s["answer"] + "<|im_end|>\n" for p, s in zip(prompts, samples, strict=True)],
        images=images,
        return_tensors="pt",
        padding=True,
    )
    prompt_lengths = [len(ids) for ids in processor(text=prompts, images=images)["input_ids"]]
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    for row, length in enumerate(prompt_lengths):
        labels[row, :length] = -100
    inputs["labels"] = labels
    return inputs


def freeze_vocabulary_and_vision(model) -> None:
    """Freeze the vision tower (its calibrated random features are what the models learn to read; training the random
    tower wiped them out), the input embeddings and the output head (the 151k-row vocabulary)."""
    model.model.visual.requires_grad_(False)
    model.get_input_embeddings().requires_grad_(False)
    model.get_output_embeddings().requires_grad_(False)


def fine_tune(model, processor, samples: list[dict[str, Any]], steps: int, batch_size: int, desc: str) -> list[float]:
    """Plain next-token fine-tuning of a tiny Qwen2.5-VL's language model on `samples` (each seen once, in order);
    returns the loss per step. AdamW at 3e-3, linear warm-up over a tenth of the steps, then linear decay to 0."""
    from lavit_hf.losses import labelled_causal_lm_loss

    freeze_vocabulary_and_vision(model)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=3e-3, weight_decay=0.0)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup)))
    )
    model.train()
    losses = []
    for step in tqdm(range(steps), desc=desc, unit="step"):
        inputs = plain_batch(processor, samples[step * batch_size : (step + 1) * batch_size]).to(model.device)
        labels = inputs.pop("labels")
        loss = labelled_causal_lm_loss(model.lm_head, model.model(**inputs).last_hidden_state, labels)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def colour_patch_tower(model) -> None:
    """Make a tiny Qwen2.5-VL's vision tower report what each 14x14 patch shows: the mean of each colour channel in
    each quarter of the patch, and each quarter's darkness, with the blocks reduced to their residual path.

    Why: a pre-trained encoder hands the language model features it can read; a tiny random tower does not (a
    random-tower student trained on the marked-shape task with labels alone stayed near chance, and so did every
    distilled one). This deterministic tower is the demo's stand-in for pre-training: the merger (random, then
    calibrated) still mixes the four patches of each image token.
    """
    visual = model.model.visual
    conv = visual.patch_embed.proj  # (channels, 3, temporal, patch, patch)
    weight = torch.zeros_like(conv.weight)
    half = conv.weight.shape[-1] // 2
    quarters = [(rows, cols) for rows in (slice(0, half), slice(half, None)) for cols in (slice(0, half), slice(half, None))]
    cells = conv.weight.shape[2] * half * half
    feature = 0
    for rows, cols in quarters:
        for channel in range(3):
            weight[feature, channel, :, rows, cols] = 1.0 / cells
            feature += 1
        weight[feature, :, :, rows, cols] = -1.0 / (3 * cells)
        feature += 1
    # The remaining channels stay random projections of the patch.
    weight[feature:] = conv.weight[feature:]
    conv.weight.copy_(weight)
    for block in visual.blocks:
        for layer in (block.attn.proj, block.mlp.down_proj):
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()


def tiny_vlm(args: DemoArguments, seed: int, hidden: int, layers: int, image_size: int, images: list):
    """A tiny Qwen2.5-VL with the colour patch tower, a calibrated projector and an output head a frozen vocabulary
    can use."""
    from lavit_hf.tiny import build_tiny_qwen2_5_vl, calibrate_image_features

    model, processor = build_tiny_qwen2_5_vl(
        seed=seed, hidden_size=hidden, num_hidden_layers=layers, min_pixels=image_size**2, max_pixels=image_size**2
    )
    model.to(args.device)
    colour_patch_tower(model)
    calibrate_image_features(model, processor, images)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head.copy_(torch.randn(head.shape, generator=generator) * FROZEN_HEAD_STD)
    return model, processor


def build_teacher(args: DemoArguments, out: Path, splits: dict[str, list]) -> Path:
    folder = out / "teacher"
    if (folder / "config.json").is_file():
        logger.info("Teacher already trained in %s", folder)
        return folder
    images = [s["image"] for s in splits["teacher"][:512]]
    model, processor = tiny_vlm(
        args, args.seed, args.teacher_hidden_size, args.teacher_layers, args.teacher_image_size, images
    )
    losses = fine_tune(model, processor, splits["teacher"], args.teacher_steps, args.batch_size, "teacher fine-tuning")
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    write_json(folder / "fine_tuning_losses.json", losses)
    return folder


def build_student_base(args: DemoArguments, out: Path, splits: dict[str, list], teacher_hidden_size: int) -> Path:
    """The pre-trained tiny Qwen2.5-VL turned into a LaViT student; every student of the experiment starts here."""
    from lavit_hf import lavit_from_base

    folder = out / "student_base"
    if (folder / "config.json").is_file():
        logger.info("Student base already built in %s", folder)
        return folder
    images = [s["image"] for s in (splits["pretrain"] or splits["train"])[:512]]
    model, processor = tiny_vlm(
        args, args.seed + 1, args.student_hidden_size, args.student_layers, args.student_image_size, images
    )
    losses = fine_tune(model, processor, splits["pretrain"], args.pretrain_steps, args.batch_size, "student pre-training")
    student, processor = lavit_from_base(
        model.cpu(), processor, num_latent_tokens=args.num_latent_tokens, teacher_hidden_size=teacher_hidden_size,
        seed=args.seed,
    )  # fmt: skip
    # The vocabulary stays frozen, so the latent rows start as ordinary random rows rather than at the mean of the
    # others (the conversion's choice for real checkpoints, whose rows train): a frozen near-mean output row could
    # never be predicted.
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for weight in (student.get_input_embeddings().weight, student.get_output_embeddings().weight):
            rows = torch.tensor(student.config.latent_token_ids)
            weight[rows] = torch.randn(len(rows), weight.shape[1], generator=generator) * weight[:1000].std()
    student.save_pretrained(folder)
    write_json(folder / "pre_training_losses.json", losses)
    return folder


# 4. Extraction ------------------------------------------------------------------------------------------------------


def write_source(samples: list[dict[str, Any]], folder: Path) -> Path:
    from .task import write_jsonl_source

    source = folder / "source.jsonl"
    if not source.is_file():
        write_jsonl_source(samples, folder)
    return source


def extract(args: DemoArguments, teacher: Path, source: Path, output: Path) -> Path:
    from datasets_scripts import extract as extraction

    argv = [
        "--source", str(source), "--image-root", str(source.parent), "--teacher", str(teacher),
        "--output-dir", str(output), "--device", args.device, "--max-new-tokens", "4",
        "--methods", *TRAJECTORY_METHODS, "--generation-batch-size", str(args.eval_batch_size),
        "--response-from", args.response_from,
        "--pretty-name", "LaViT demo: marked shapes",
    ]  # fmt: skip
    if args.gradient_temperature is not None:
        argv += ["--gradient-temperature", str(args.gradient_temperature)]
    if args.vtop_source != "pooled":
        argv += ["--token-features", "true"]
    extraction.main(extraction.make_parser().parse_args(argv))
    return output


# 5. Students ---------------------------------------------------------------------------------------------------------

# Demo options that name a `lavit train` argument and are not part of the equal budget (`Budget`) or the seed loop.
STUDENT_OPTIONS = (
    "num_latent_tokens", "latent_separator", "trajectory_method", "vtop_normalization", "vtop_source", "head_layer",
)  # fmt: skip


def student_settings(args: DemoArguments) -> dict[str, Any]:
    """The `lavit train` arguments every student shares besides its budget: the frozen vocabulary and tower (as the
    teacher and the base were trained) and each of `STUDENT_OPTIONS`."""
    return {"freeze_embeddings": True, "freeze_vision": True} | {name: getattr(args, name) for name in STUDENT_OPTIONS}


def target_probe_accuracy(args: DemoArguments, base: Path, train_rows: list[dict], test_rows: list[dict]) -> float:
    """How much of the answer the V_top targets carry: the latent probe's classifier reading the answer from each row's
    target, as the students' collator computes it (`vtop_source`, `trajectory_method`), trained on the distillation
    set and scored on the held-out items. A student whose latent state matched its targets exactly would give a
    linear reader this much."""
    from transformers import AutoProcessor

    from trainer.collator import DataCollatorForLaViT

    from .experiment import linear_probe_accuracy, vtop_targets

    pixels = args.student_image_size**2
    collator = DataCollatorForLaViT(
        AutoProcessor.from_pretrained(base), num_latent_tokens=args.num_latent_tokens,
        latent_separator=args.latent_separator, trajectory_method=args.trajectory_method, vtop_source=args.vtop_source,
        min_pixels=pixels, max_pixels=pixels,
    )  # fmt: skip
    answers = [row["answer"] for row in train_rows], [row["answer"] for row in test_rows]
    return linear_probe_accuracy(vtop_targets(collator, train_rows), answers[0], vtop_targets(collator, test_rows), answers[1])


# 6. Evaluation --------------------------------------------------------------------------------------------------------


def teacher_accuracy(args: DemoArguments, teacher: Path, test_dataset, output: Path) -> dict[str, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from evaluate_metrics.runner import EvalRunner, score

    model = AutoModelForImageTextToText.from_pretrained(teacher).to(args.device)
    pixels = args.teacher_image_size**2
    runner = EvalRunner(
        model, AutoProcessor.from_pretrained(teacher), batch_size=args.eval_batch_size, max_new_tokens=4,
        min_pixels=pixels, max_pixels=pixels,
    )  # fmt: skip
    return score("shapes", test_dataset, runner.run(test_dataset, output))


def trajectory_box_mass(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean share of each teacher trajectory's mass inside the marked shape's box, and of a uniform map."""
    from lavit_hf.grids import box_mass
    from lavit_hf.schema import trajectory_column

    shares = {method: [] for method in TRAJECTORY_METHODS} | {"uniform": []}
    for row in rows:
        grid, size = tuple(row["teacher_grid"]), tuple(row["image_size"])
        for method in TRAJECTORY_METHODS:
            shares[method].append(box_mass(row[trajectory_column(method)], grid, size, row["bbox"]))
        shares["uniform"].append(box_mass(torch.full(grid, 1.0 / (grid[0] * grid[1])), grid, size, row["bbox"]))
    return {name: sum(values) / len(values) for name, values in shares.items()}


def evaluate_student(
    args: DemoArguments, student: Path, train_rows: list[dict], test_dataset, test_rows: list[dict], output: Path
) -> dict[str, Any]:
    """Per-item correctness under each diagnostic, and the latent probe's held-out accuracy."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .experiment import latent_states, linear_probe_accuracy, score_diagnostics, student_trajectory_box_mass

    result_file = output / "scores.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if "items" in result and "trajectory_mass_in_box" in result:
        return result
    pixels = args.student_image_size**2
    if "items" not in result:
        result["items"] = score_diagnostics(student, test_dataset, output, pixels, args.device, args.eval_batch_size)
    model = AutoModelForImageTextToText.from_pretrained(student).to(args.device).eval()
    processor = AutoProcessor.from_pretrained(student)
    set_pixel_limits(processor, pixels, pixels)
    if "probe_accuracy" not in result:
        train_states = latent_states(model, processor, train_rows, args.device)
        test_states = latent_states(model, processor, test_rows, args.device)
        result["probe_accuracy"] = linear_probe_accuracy(
            train_states, [r["answer"] for r in train_rows], test_states, [r["answer"] for r in test_rows]
        )
    result["trajectory_mass_in_box"] = student_trajectory_box_mass(model, processor, test_rows, args.device)
    write_json(result_file, result)
    return result


def cpu_model() -> str | None:
    """The CPU's model name where the system says it (Linux), else None."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def environment(device: str) -> dict[str, Any]:
    """What the figures were computed on: the tiny models learn the task late, which amplifies the rounding
    differences between machines (docs/experiments.md, Machines)."""
    import platform

    import transformers

    found = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device.startswith("cuda"):
        found["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return found


# Orchestration --------------------------------------------------------------------------------------------------------

# What a rerun in the same folder may change: it adds students or scores them elsewhere, reusing everything made before.
RESUMABLE_CHANGES = frozenset({"out", "device", "seeds", "variants", "ablation", "eval_batch_size"})


def _same(before: Any, now: Any) -> bool:
    if isinstance(before, float | int) and isinstance(now, float | int) and float in (type(before), type(now)):
        return math.isclose(before, now, rel_tol=1e-9)
    return before == now


def check_resumable(saved: Path, arguments: dict[str, Any]) -> None:
    """Refuse a rerun whose settings differ from those the folder's teacher, dataset and students were made with: it
    would reuse them as if they had been made with the new ones."""
    if not saved.is_file():
        return
    before = json.loads(saved.read_text())
    changed = sorted(
        name
        for name, value in arguments.items()
        if name not in RESUMABLE_CHANGES and not _same(before.get(name, value), value)
    )
    if changed:
        details = ", ".join(f"{name}: {before[name]!r} -> {arguments[name]!r}" for name in changed)
        raise ValueError(f"{saved.parent} was made with other settings ({details}); use a new --out.")



def main(args: DemoArguments | Any) -> dict[str, Any]:
    from datasets import load_dataset

    from .experiment import train_variant
    from .report import write_report
    from .task import synthetic_dataset

    if not isinstance(args, DemoArguments):
        args = DemoArguments(**{k: v for k, v in vars(args).items() if k != "config"})
    started = time.time()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check_resumable(out / "demo_arguments.json", asdict(args))
    write_json(out / "demo_arguments.json", asdict(args))
    phases = {}

    def phase(name: str, since: float) -> float:
        phases[name] = round(time.time() - since, 1)
        logger.info("%s: %.0f s", name, phases[name])
        return time.time()

    mark = time.time()
    splits = task_splits(args)
    test_dataset = synthetic_dataset(splits["test"])
    mark = phase("task", mark)
    teacher = build_teacher(args, out, splits)
    teacher_scores = teacher_accuracy(args, teacher, test_dataset, out / "eval" / "teacher.jsonl")
    mark = phase("teacher", mark)
    datasets_dir = {
        split: extract(args, teacher, write_source(splits[split], out / "task" / split), out / "dataset" / split)
        for split in ("train", "test")
    }
    train_rows = list(load_dataset(str(datasets_dir["train"]), split="train"))
    test_rows = list(load_dataset(str(datasets_dir["test"]), split="train"))
    mark = phase("extraction", mark)
    base = build_student_base(args, out, splits, len(train_rows[0]["vtop"]))
    mark = phase("student base", mark)

    budget = Budget(
        args.student_steps,
        args.learning_rate,
        args.batch_size,
        stage1_share=args.stage1_share,
        stage2_learning_rate_ratio=args.stage2_learning_rate_ratio,
    )
    extra = student_settings(args)
    students: dict[str, dict[int, dict[str, Any]]] = {}
    for variant in resolve_variants(args.variants):
        for seed in args.seeds:
            folder = out / "students" / variant.name / f"seed{seed}"
            trained = train_variant(
                variant, seed, base, datasets_dir["train"], folder, budget, args.student_image_size**2, args.device, extra
            )
            mark = phase(f"train {variant.name} seed {seed}", mark)
            students.setdefault(variant.name, {})[seed] = evaluate_student(
                args, trained, train_rows, test_dataset, test_rows, folder / "eval"
            )
            mark = phase(f"evaluate {variant.name} seed {seed}", mark)
    results = {
        "arguments": asdict(args),
        "teacher": teacher_scores,
        "teacher_trajectory_mass_in_box": trajectory_box_mass(test_rows),
        "target_probe_accuracy": target_probe_accuracy(args, base, train_rows, test_rows),
        "students": students,
        "test_ids": list(test_dataset["id"]),
        "environment": environment(args.device),
        "seconds": round(time.time() - started, 1),
        "phase_seconds": phases,
    }
    write_json(out / "results.json", results)
    logger.info("\n%s", write_report(out, results))
    return results


def cli(argv: list[str] | None = None) -> None:
    from lavit_hf.arguments import parse_with_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(parse_with_config(make_parser(), list(sys.argv[1:] if argv is None else argv)))


__all__ = ["DemoArguments", "main", "make_parser"]
