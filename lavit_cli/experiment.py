"""The demo's experiment: students trained by several recipes (variants) at an equal budget over several seeds, each
scored on the same held-out items by normal decoding and by the two latent-token diagnostics, with a linear probe of
what the latent tokens carry.

A variant is a name and the `LaViTTrainingArguments` it changes; every variant of one experiment shares the base
checkpoint, the distillation set, the number of optimiser steps, the peak learning rate, the batch size and the
seeds. Two-stage variants split the same steps between the stages (the paper's 40/60 split by default) and run stage
2 at the paper's ratio of learning rates (2e-6 / 5e-6) by default; both are `Budget` fields.

The reliance diagnostics (docs/method.md section 4), scored with `lavit eval`'s runner:
- `normal`: greedy decoding; the student writes its own latent tokens (or not).
- `force`: the K latent tokens are written into the prompt, then greedy decoding.
- `mask`: as `force`, and no later position may attend to the latent tokens (for every generated token): the answer
  gets nothing the latent tokens computed. A student that relies on its latent tokens loses accuracy here.
"""

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


logger = logging.getLogger(__name__)

DIAGNOSTICS = ("normal", "force", "mask")
# The paper's two stages: 400 of 1,000 steps at 5e-6, then 600 at 2e-6 (docs/method.md section 3).
PAPER_STAGE1_SHARE = 0.4
PAPER_STAGE2_LR_RATIO = 0.4  # 2e-6 / 5e-6


@dataclass(frozen=True)
class Variant:
    """A training recipe of the experiment.

    Attributes:
        name (`str`): its key (folder names, report rows).
        description (`str`): one line for the report.
        two_stage (`bool`): the bottleneck stage then the joint stage, or one single stage.
        overrides (`dict[str, Any]`): `LaViTTrainingArguments` fields it sets (loss weights, switches).
    """

    name: str
    description: str
    two_stage: bool
    overrides: dict[str, Any] = field(default_factory=dict)


VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant(
            "ce_only",
            "cross-entropy only, one stage (the latent tokens are in every answer, no teacher signal)",
            False,
            {"vtop_loss_weight": 0.0, "trajectory_loss_weight": 0.0},
        ),
        Variant(
            "ce_two_stage",
            "cross-entropy only, two stages (the stage-1 bottleneck without the teacher's signals)",
            True,
            {"vtop_loss_weight": 0.0, "trajectory_loss_weight": 0.0},
        ),
        Variant("lavit_single", "LaViT, one stage: CE + V_top + trajectory (0.3 / 0.3)", False),
        Variant("lavit_two_stage", "LaViT, two stages (the paper): CE + V_top + trajectory, bottleneck first", True),
        Variant("vtop_only", "two stages, CE + V_top (no trajectory loss)", True, {"trajectory_loss_weight": 0.0}),
        Variant(
            "trajectory_only", "two stages, CE + trajectory (no V_top loss)", True, {"vtop_loss_weight": 0.0}
        ),
        Variant(
            "lavit_two_stage_attention",
            "LaViT, two stages, the trajectory loss on the latent tokens' own attention (latent_attention)",
            True,
            {"trajectory_prediction": "latent_attention"},
        ),
        Variant(
            "trajectory_attention_only",
            "two stages, CE + the trajectory loss on the latent tokens' own attention (no V_top loss)",
            True,
            {"vtop_loss_weight": 0.0, "trajectory_prediction": "latent_attention"},
        ),
    )
}
DEFAULT_VARIANTS = ("ce_only", "lavit_two_stage")


def resolve_variants(names: Sequence[str]) -> list[Variant]:
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise ValueError(f"Unknown variant(s) {unknown}; known: {sorted(VARIANTS)}.")
    return [VARIANTS[name] for name in names]


@dataclass
class Budget:
    """What every variant of one experiment shares.

    Attributes:
        steps (`int`): optimiser steps in all (a two-stage run splits them).
        learning_rate (`float`): peak learning rate (stage 1 of a two-stage run).
        batch_size (`int`): samples per optimiser step.
        warmup_ratio (`float`): linear warm-up, as a share of each stage's steps.
        stage1_share (`float`): the share of the steps that stage 1 takes.
        stage2_learning_rate_ratio (`float`): stage 2's peak learning rate over stage 1's.
    """

    steps: int
    learning_rate: float
    batch_size: int
    warmup_ratio: float = 0.1
    stage1_share: float = PAPER_STAGE1_SHARE
    stage2_learning_rate_ratio: float = PAPER_STAGE2_LR_RATIO

    def __post_init__(self):
        if not 0 < self.stage1_share < 1:
            raise ValueError(f"stage1_share must lie in (0, 1), got {self.stage1_share}.")
        if self.stage2_learning_rate_ratio <= 0:
            raise ValueError(f"stage2_learning_rate_ratio must be positive, got {self.stage2_learning_rate_ratio}.")

    def schedule(self, variant: Variant) -> dict[str, Any]:
        """The `LaViTTrainingArguments` schedule fields of `variant` under this budget."""
        if not variant.two_stage:
            return {
                "stage_schedule": "single",
                "max_steps": self.steps,
                "learning_rate": self.learning_rate,
                "warmup_steps": self.warmup_ratio,
            }
        stage1 = max(1, round(self.steps * self.stage1_share))
        return {
            "stage_schedule": "two_stage",
            "stage1_steps": stage1,
            "stage2_steps": self.steps - stage1,
            "stage1_learning_rate": self.learning_rate,
            "stage2_learning_rate": self.learning_rate * self.stage2_learning_rate_ratio,
            "stage1_warmup_ratio": self.warmup_ratio,
            "stage2_warmup_ratio": self.warmup_ratio,
        }


def train_variant(
    variant: Variant,
    seed: int,
    base: Path,
    dataset: Path,
    output: Path,
    budget: Budget,
    image_pixels: int,
    device: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Train one student through `lavit train` (resumable: a finished student is reused) and return its folder."""
    from trainer.configuration import LaViTTrainingArguments
    from trainer.train import main as train_main

    final = output / "stage2" if variant.two_stage else output
    if (final / "config.json").is_file() and (final / "trainer_state.json").is_file():
        logger.info("%s (seed %d) already trained in %s", variant.name, seed, final)
        return final
    fields = {**budget.schedule(variant), **variant.overrides, **(extra or {})}
    train_main(
        LaViTTrainingArguments(
            output_dir=str(output),
            model_name_or_path=str(base),
            dataset_name_or_path=str(dataset),
            min_pixels=image_pixels,
            max_pixels=image_pixels,
            per_device_train_batch_size=budget.batch_size,
            gradient_accumulation_steps=1,
            weight_decay=0.0,
            logging_steps=5,
            save_strategy="no",
            report_to=[],
            seed=seed,
            data_seed=seed,
            use_cpu=device == "cpu",
            activation_checkpointing=False,
            # Tiny models: compiling their blocks would take longer than the whole run.
            torch_compile=False,
            dataloader_num_workers=0,
            **fields,
        )
    )
    return final


def score_diagnostics(
    model_dir: Path,
    test_dataset,
    output: Path,
    image_pixels: int,
    device: str,
    batch_size: int,
    diagnostics: Sequence[str] = DIAGNOSTICS,
) -> dict[str, dict[str, bool]]:
    """Each held-out item's correctness under each diagnostic: `{diagnostic: {item id: correct}}`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from evaluate_metrics.runner import EvalRunner
    from evaluate_metrics.shapes.shapes import extract_answer

    model = AutoModelForImageTextToText.from_pretrained(model_dir).to(device)
    processor = AutoProcessor.from_pretrained(model_dir)
    answers = dict(zip(test_dataset["id"], test_dataset["answer"], strict=True))
    results = {}
    for diagnostic in diagnostics:
        runner = EvalRunner(
            model,
            processor,
            batch_size=batch_size,
            max_new_tokens=model.config.num_latent_tokens + 4,
            force_latent=diagnostic in ("force", "mask"),
            mask_latent=diagnostic == "mask",
            min_pixels=image_pixels,
            max_pixels=image_pixels,
        )
        predictions = runner.run(test_dataset, output / f"{diagnostic}.jsonl")
        results[diagnostic] = {
            p["id"]: extract_answer(p["prediction"]) == answers[p["id"]].lower() for p in predictions
        }
    return results


def forced_latent_batches(
    model, processor, rows: Sequence[dict[str, Any]], device: str, batch_size: int = 32
) -> Iterator[tuple[Sequence[dict[str, Any]], Any]]:
    """`(rows, inputs)` per batch: each row's prompt with the latent tokens forced (what the answer would read),
    left-padded, on `device`."""
    from lavit_hf.images import to_rgb
    from lavit_hf.layout import latent_prefix, render_prompt

    prefix = latent_prefix(model.config.num_latent_tokens)
    processor.tokenizer.padding_side = "left"
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        inputs = processor(
            text=[render_prompt(processor, row["question"]) + prefix for row in chunk],
            images=[to_rgb(row["image"]) for row in chunk],
            return_tensors="pt",
            padding=True,
        ).to(device)
        yield chunk, inputs


@torch.no_grad()
def latent_states(model, processor, rows: Sequence[dict[str, Any]], device: str) -> torch.Tensor:
    """The final hidden state of the last latent token for each row's prompt with the latent tokens forced: what the
    answer can read from the latent tokens. `(rows, hidden)`."""
    states = []
    for _, inputs in forced_latent_batches(model, processor, rows, device):
        output = model(**inputs, output_hidden_states=True, use_cache=False)
        states.append(output.hidden_states[-1][:, -1].float().cpu())
    return torch.cat(states)


@torch.no_grad()
def student_trajectory_box_mass(model, processor, rows: Sequence[dict[str, Any]], device: str) -> dict[str, float]:
    """Where the student looks: the mean share of its predicted trajectory (the trajectory head's, or its latent
    tokens' attention under `trajectory_prediction="latent_attention"`) inside each row's box, on the prompt with the
    latent tokens forced, against a uniform map on the same grid. `{"student": ..., "uniform": ...}`."""
    from lavit_hf.grids import box_mass

    merge = model.config.vision_config.spatial_merge_size
    shares = {"student": [], "uniform": []}
    for chunk, inputs in forced_latent_batches(model, processor, rows, device):
        grids = [(int(h) // merge, int(w) // merge) for _, h, w in inputs["image_grid_thw"].tolist()]
        counts = [h * w for h, w in grids]
        valid = torch.arange(max(counts), device=device)[None, :] < torch.tensor(counts, device=device)[:, None]
        # The model predicts the trajectory when given a target; the prediction does not depend on the target's values.
        uniform = valid.float() / valid.sum(-1, keepdim=True)
        output = model(**inputs, trajectory_target=uniform, trajectory_mask=valid, use_cache=False)
        predicted = output.trajectory_log_probs.exp().float().cpu()
        for row, grid, count, distribution in zip(chunk, grids, counts, predicted, strict=True):
            size, box = tuple(row["image_size"]), row["bbox"]
            shares["student"].append(box_mass(distribution[:count], grid, size, box))
            shares["uniform"].append(box_mass(torch.full(grid, 1.0 / count), grid, size, box))
    return {name: sum(values) / len(values) for name, values in shares.items()}


def linear_probe_accuracy(
    train_states: torch.Tensor,
    train_labels: Sequence[str],
    test_states: torch.Tensor,
    test_labels: Sequence[str],
    weight_decay: float = 1e-3,
    steps: int = 200,
) -> float:
    """Held-out accuracy of a multinomial logistic regression reading the label from the states (features
    standardised on the training states; L-BFGS, a fixed number of steps, no tuning on the held-out items)."""
    classes = sorted(set(train_labels))
    index = {label: i for i, label in enumerate(classes)}
    mean, std = train_states.mean(0), train_states.std(0).clamp_min(1e-6)
    x_train, x_test = (train_states - mean) / std, (test_states - mean) / std
    y_train = torch.tensor([index[label] for label in train_labels])
    probe = torch.nn.Linear(x_train.shape[1], len(classes))
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(x_train), y_train) + weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    predicted = probe(x_test).argmax(-1).tolist()
    return sum(classes[p] == label for p, label in zip(predicted, test_labels, strict=True)) / len(test_labels)


@torch.no_grad()
def vtop_targets(collator, rows: Sequence[dict[str, Any]], batch_size: int = 64) -> torch.Tensor:
    """The V_top target each row gives a student, computed by the training collator itself (pooled, or weighted by the
    row's trajectory on the student's grid; token-wise targets mean-pooled over the image). `(rows, teacher_hidden)`."""
    targets = []
    for start in range(0, len(rows), batch_size):
        batch = collator(list(rows[start : start + batch_size]))
        target = batch["vtop_target"].float()
        if target.ndim == 3:
            mask = batch["vtop_target_mask"].unsqueeze(-1).float()
            target = (target * mask).sum(1) / mask.sum(1)
        targets.append(target)
    return torch.cat(targets)


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1))


__all__ = [
    "DEFAULT_VARIANTS",
    "DIAGNOSTICS",
    "PAPER_STAGE1_SHARE",
    "PAPER_STAGE2_LR_RATIO",
    "VARIANTS",
    "Budget",
    "Variant",
    "forced_latent_batches",
    "latent_states",
    "linear_probe_accuracy",
    "resolve_variants",
    "score_diagnostics",
    "student_trajectory_box_mass",
    "train_variant",
    "vtop_targets",
]
