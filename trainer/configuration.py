"""`LaViTTrainingArguments`: `transformers.TrainingArguments` plus the LaViT fields (laid out like TRL's `SFTConfig`)."""

import logging
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from lavit_hf.schema import trajectory_column


logger = logging.getLogger(__name__)

STAGE_SCHEDULES = ("single", "two_stage", "stage1", "stage2")
VTOP_SOURCES = ("pooled", "tokens")
MODEL_DTYPES = ("float32", "bfloat16")


@dataclass
class LaViTTrainingArguments(TrainingArguments):
    r"""
    Arguments of `LaViTTrainer` and `lavit train`: every `transformers.TrainingArguments` field plus the fields
    below (see the `help` of each field for its meaning; METHOD.md sections 2 and 3 for the method).

    Parameters that control the model:
        `model_name_or_path`, `num_latent_tokens`, `model_dtype`, `freeze_vision`, `freeze_llm`.

    Parameters that control the data:
        `dataset_name_or_path`, `eval_dataset_name_or_path`, `eval_split`, `trajectory_method`, `vtop_source`,
        `min_pixels`, `max_pixels`.

    Parameters that control the training:
        `stage_schedule`, `stage1_steps`, `stage1_learning_rate`, `stage1_warmup_ratio`, `stage2_steps`,
        `stage2_learning_rate`, `stage2_warmup_ratio`, `ce_loss_weight`, `vtop_loss_weight`, `trajectory_loss_weight`,
        `block_prompt`, `ce_in_stage1`.

    > [!NOTE]
    > These defaults differ from `TrainingArguments` (they are the reference recipe of METHOD.md section 3):
    > - `remove_unused_columns=False`: the teacher targets are not forward arguments the Trainer would recognise
    >   (HF_NOTES.md, Trainer).
    > - `bf16=None`, resolved to `True` where a CUDA device supports bfloat16, else `False`.
    > - `activation_checkpointing=True`, with `activation_checkpointing_kwargs={"use_reentrant": False}` (the vision
    >   tower is frozen, so reentrant checkpointing would see inputs without gradient).
    > - `learning_rate=5e-6`, `warmup_steps=0.06` (a ratio), `weight_decay=0.1`.
    > - `per_device_train_batch_size=1`, `gradient_accumulation_steps=16`.
    > - `logging_steps=10`, `prediction_loss_only=True` (evaluation needs the losses, never 152k-wide logits).
    >
    > `torch_compile=True` compiles each decoder layer and vision block in place (`compile_repeated_blocks`), not
    > the whole model as `Trainer` would: the image-text merge and the masks are full of host syncs and
    > data-dependent shapes, and the blocks are where the step's elementwise work fuses.
    """

    # Parameters that control the model
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A base checkpoint folder of a supported family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL; converted to a "
            "LaViT student by `lavit_hf.lavit_from_base`) or a LaViT checkpoint (for example stage 1's output, to run "
            "stage 2 alone)."
        },
    )
    num_latent_tokens: int = field(
        default=4,
        metadata={"help": "K, the number of latent tokens <lvr1>..<lvrK> that start every answer (paper: 4)."},
    )
    model_dtype: str = field(
        default="float32",
        metadata={
            "help": "Dtype of the weights: `float32` (bf16/fp16 mixed precision autocasts over them, the reference "
            "recipe) or `bfloat16` (half the weight and optimiser memory, less exact updates).",
            "choices": MODEL_DTYPES,
        },
    )
    freeze_vision: bool = field(
        default=True,
        metadata={"help": "Freeze the vision tower, its patch merger included (the reference recipe)."},
    )
    freeze_llm: bool = field(
        default=False,
        metadata={
            "help": "Freeze the language model and its LM head, so that only the V_top and trajectory heads train."
        },
    )

    # Parameters that control the data
    dataset_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A LaViT dataset (written by `lavit extract`): a local folder or a Hub id for load_dataset."},
    )
    eval_dataset_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A LaViT dataset to evaluate on; defaults to `dataset_name_or_path` when `eval_split` is set."},
    )
    eval_split: str | None = field(
        default=None,
        metadata={"help": "The split of the evaluation dataset to evaluate on (none: no evaluation)."},
    )
    trajectory_method: str = field(
        default="attention",
        metadata={
            "help": "Which teacher trajectory trains the trajectory head: a method the dataset holds (its "
            "`trajectory_<method>` column, e.g. attention or gradient)."
        },
    )
    vtop_source: str = field(
        default="pooled",
        metadata={
            "help": "V_top target: `pooled` (the `vtop` column) or `tokens` (the token-wise `vtop_tokens` column "
            "resampled to the student's grid and pooled over it by the model).",
            "choices": VTOP_SOURCES,
        },
    )
    min_pixels: int = field(
        default=200_704,
        metadata={"help": "Smallest image area in pixels after resizing by the processor (reference: 200,704)."},
    )
    max_pixels: int = field(
        default=4_194_304,
        metadata={"help": "Largest image area in pixels after resizing by the processor (reference: 4,194,304)."},
    )

    # Parameters that control the training
    stage_schedule: str = field(
        default="single",
        metadata={
            "help": "`single`: one stage, causal attention, all losses. `two_stage`: stage 1 (bottleneck) then stage 2 "
            "(joint) from stage 1's weights, in `output_dir/stage1` and `output_dir/stage2`. `stage1` or `stage2`: "
            "that stage alone (stage 2 from a stage-1 checkpoint given as `model_name_or_path`).",
            "choices": STAGE_SCHEDULES,
        },
    )
    stage1_steps: int = field(default=400, metadata={"help": "Optimiser steps of stage 1 (bottleneck)."})
    stage1_learning_rate: float = field(default=5e-6, metadata={"help": "Peak learning rate of stage 1."})
    stage1_warmup_ratio: float = field(
        default=0.06, metadata={"help": "Linear warm-up of stage 1, as a fraction of its steps."}
    )
    stage2_steps: int = field(default=600, metadata={"help": "Optimiser steps of stage 2 (joint)."})
    stage2_learning_rate: float = field(default=2e-6, metadata={"help": "Peak learning rate of stage 2."})
    stage2_warmup_ratio: float = field(
        default=0.03, metadata={"help": "Linear warm-up of stage 2, as a fraction of its steps."}
    )
    ce_loss_weight: float | None = field(
        default=None,
        metadata={"help": "Weight of the next-token cross-entropy; unset: the model config's (1.0 when converted)."},
    )
    vtop_loss_weight: float | None = field(
        default=None,
        metadata={"help": "Weight of 1 - cos(V_top prediction, target); unset: the model config's (paper: 0.3)."},
    )
    trajectory_loss_weight: float | None = field(
        default=None,
        metadata={"help": "Weight of KL(teacher trajectory || predicted); unset: the model config's (paper: 0.3)."},
    )
    block_prompt: bool | None = field(
        default=None,
        metadata={
            "help": "In stage 1, also block the question after the image from the image; unset: the model config's "
            "(default on)."
        },
    )
    ce_in_stage1: bool | None = field(
        default=None,
        metadata={
            "help": "Whether the cross-entropy enters the stage-1 loss (it is logged either way); unset: the model "
            "config's (default on, as the reference code does)."
        },
    )

    # Defaults that differ from TrainingArguments (listed in the docstring's note).
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep False: the teacher targets are not forward arguments the Trainer would recognise."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bfloat16 mixed precision; unset: on where a CUDA device supports it."},
    )
    activation_checkpointing: bool | None = field(
        default=True,
        metadata={"help": "Activation (gradient) checkpointing, on by default (reference recipe)."},
    )
    activation_checkpointing_kwargs: dict | str | None = field(
        default_factory=lambda: {"use_reentrant": False},
        metadata={"help": "Keyword arguments of activation checkpointing (default: non-reentrant)."},
    )
    learning_rate: float = field(default=5e-6, metadata={"help": "Peak learning rate of a single-stage run."})
    warmup_steps: float = field(
        default=0.06,
        metadata={"help": "Warm-up of a single-stage run: steps (integer) or a fraction of the run in [0, 1)."},
    )
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (reference: 0.1)."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Batch size per device for training."})
    gradient_accumulation_steps: int = field(
        default=16, metadata={"help": "Micro-batches accumulated per optimiser step (reference: 16)."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every this many optimiser steps."})
    prediction_loss_only: bool = field(
        default=True, metadata={"help": "Evaluation keeps the losses only, never the vocabulary-wide logits."}
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        super().__post_init__()
        self._check_choices()
        self._check_ranges()
        if self.remove_unused_columns:
            logger.warning("remove_unused_columns=True: LaViTTrainer keeps the columns its collator reads anyway.")

    def _check_choices(self) -> None:
        for name, choices in (
            ("stage_schedule", STAGE_SCHEDULES),
            ("vtop_source", VTOP_SOURCES),
            ("model_dtype", MODEL_DTYPES),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {list(choices)}.")
        # Any method name a dataset can hold; the collator checks that the dataset holds it.
        trajectory_column(self.trajectory_method)

    def _check_ranges(self) -> None:
        if self.num_latent_tokens < 1:
            raise ValueError(f"num_latent_tokens must be at least 1, got {self.num_latent_tokens}.")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"Need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}.")
        for stage in (1, 2):
            steps = getattr(self, f"stage{stage}_steps")
            warmup = getattr(self, f"stage{stage}_warmup_ratio")
            if steps < 1:
                raise ValueError(f"stage{stage}_steps must be at least 1, got {steps}.")
            if getattr(self, f"stage{stage}_learning_rate") <= 0:
                raise ValueError(f"stage{stage}_learning_rate must be positive.")
            if not 0 <= warmup < 1:
                raise ValueError(f"stage{stage}_warmup_ratio must lie in [0, 1), got {warmup}.")
        for name in ("ce_loss_weight", "vtop_loss_weight", "trajectory_loss_weight"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be non-negative, got {value}.")

    def stage_overrides(self, stage: int) -> dict:
        """The `TrainingArguments` values of stage `stage` (1 or 2) of a staged schedule: steps, learning rate and a
        warm-up ratio of its own (METHOD.md section 3: 400 steps at 5e-6, warm-up 0.06; then 600 at 2e-6, 0.03)."""
        return {
            "max_steps": getattr(self, f"stage{stage}_steps"),
            "learning_rate": getattr(self, f"stage{stage}_learning_rate"),
            "warmup_steps": getattr(self, f"stage{stage}_warmup_ratio"),
        }


__all__ = ["STAGE_SCHEDULES", "LaViTTrainingArguments"]
