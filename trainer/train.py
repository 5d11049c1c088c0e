"""`lavit train`: train a LaViT student from a LaViT dataset, in one stage or two (METHOD.md section 3).

Example (a tiny run on a CPU):

```bash
lavit make-tiny --kind student --out tiny-student
lavit train --model_name_or_path tiny-student --dataset_name_or_path my-lavit-dataset --output_dir out \
    --stage_schedule two_stage --stage1_steps 4 --stage2_steps 4 --gradient_accumulation_steps 1 \
    --min_pixels 3136 --max_pixels 50176 --activation_checkpointing false
```

or with a YAML file whose keys are these option names (flags given on the command line win):

```bash
lavit train --config train.yaml --stage2_learning_rate 1e-6
```

Outputs: a `single`, `stage1` or `stage2` run writes its checkpoints (`checkpoint-N/`) and final model to
`output_dir`; a `two_stage` run writes stage 1 to `output_dir/stage1` and stage 2, the final model, to
`output_dir/stage2`. Every checkpoint and final model holds the weights, config, processor, modeling code and card.
Multi-GPU runs: `accelerate launch --config_file trainer/accelerate_configs/<ddp|fsdp2|deepspeed_zero2|...>.yaml
-m trainer.train ...` (see `trainer/accelerate_configs/README.md`).
"""

import argparse
import dataclasses
import gc
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .configuration import LaViTTrainingArguments


logger = logging.getLogger(__name__)

def make_parser():
    """The `HfArgumentParser` of `LaViTTrainingArguments` (every `TrainingArguments` flag plus the LaViT ones)."""
    from transformers import HfArgumentParser

    return HfArgumentParser(LaViTTrainingArguments, description=__doc__)


def to_training_arguments(args: argparse.Namespace | LaViTTrainingArguments) -> LaViTTrainingArguments:
    """The dataclass from what `lavit_hf.arguments.parse_with_config` returns (a Namespace with one entry per field)."""
    if isinstance(args, LaViTTrainingArguments):
        return args
    names = {field.name for field in dataclasses.fields(LaViTTrainingArguments) if field.init}
    values = vars(args)
    unknown = sorted(set(values) - names - {"config"})
    if unknown:
        raise ValueError(f"Unknown training options {unknown}.")
    return LaViTTrainingArguments(**{key: value for key, value in values.items() if key in names})


def load_student(path: str | os.PathLike, teacher_hidden_size: int | None, args: LaViTTrainingArguments):
    """A LaViT student and its processor from `path`: a LaViT checkpoint as it is, a base checkpoint of any supported
    family converted by `lavit_hf.lavit_from_base` (K latent tokens, V_top head of the data's width).

    Weights are float32 (mixed precision autocasts over them, the reference recipe) unless `model_dtype` says
    bfloat16; a V_top width that disagrees with the data is an error."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, PretrainedConfig

    from lavit_hf import STUDENT_FAMILIES, lavit_from_base

    model_type = PretrainedConfig.get_config_dict(str(path))[0].get("model_type")
    if model_type in {family.model_type for family in STUDENT_FAMILIES.values()}:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(path)
    else:  # any supported base family; others are refused by name
        model, processor = lavit_from_base(
            path, num_latent_tokens=args.num_latent_tokens, teacher_hidden_size=teacher_hidden_size, seed=args.seed
        )
    if teacher_hidden_size is not None and model.config.teacher_hidden_size != teacher_hidden_size:
        raise ValueError(
            f"{path}: its V_top head has width {model.config.teacher_hidden_size} but the dataset's teacher features "
            f"have {teacher_hidden_size}."
        )
    model = model.to(dtype=getattr(torch, args.model_dtype))
    model.processor = processor
    return model, processor


def load_datasets(args: LaViTTrainingArguments):
    """The training split and, with `eval_split`, the evaluation split; targets read as torch tensors (about 5x
    faster than nested lists, HF_NOTES.md) while the image and text columns stay Python objects."""
    from datasets import load_dataset

    from lavit_hf import schema

    if args.dataset_name_or_path is None:
        raise ValueError("Pass --dataset_name_or_path (a LaViT dataset written by `lavit extract`).")
    train_dataset = with_target_format(load_dataset(args.dataset_name_or_path, split="train"))
    eval_dataset = None
    if args.eval_split is not None:
        source = args.eval_dataset_name_or_path or args.dataset_name_or_path
        eval_dataset = with_target_format(load_dataset(source, split=args.eval_split))
    return train_dataset, eval_dataset, schema.teacher_hidden_size_of(train_dataset.features)


def with_target_format(dataset):
    """`dataset` with its numeric teacher-target columns formatted as torch tensors, the others left as they are."""
    from lavit_hf import schema

    trajectories = [schema.trajectory_column(method) for method in schema.trajectory_methods(dataset.column_names)]
    numeric = [schema.TEACHER_GRID, schema.VTOP, schema.VTOP_TOKENS, *trajectories]
    columns = [name for name in numeric if name in dataset.column_names]
    return dataset.with_format("torch", columns=columns, output_all_columns=True)


def _last_checkpoint(folder: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def _resolve_two_stage_resume(resume: str | bool | None, output_dir: Path) -> tuple[str | None, str | None]:
    """Which stage a `two_stage` run resumes: `(stage-1 checkpoint, stage-2 checkpoint)`, at most one set.

    `True` (or "true") picks the latest checkpoint, of stage 2 if it has one, else of stage 1; a path resumes the
    stage whose folder holds it."""
    if resume in (None, False, "", "false", "False"):
        return None, None
    if resume in (True, "true", "True"):
        stage2 = _last_checkpoint(output_dir / "stage2")
        return (None, stage2) if stage2 else (_last_checkpoint(output_dir / "stage1"), None)
    parent = Path(resume).resolve().parent
    if parent == (output_dir / "stage2").resolve():
        return None, str(resume)
    if parent == (output_dir / "stage1").resolve():
        return str(resume), None
    raise ValueError(f"resume_from_checkpoint {resume}: a two-stage run resumes a checkpoint of {output_dir}/stage1 or /stage2.")


def _stage_args(args: LaViTTrainingArguments, stage: int) -> LaViTTrainingArguments:
    """Arguments of stage `stage` of a two-stage run: its own folder, steps, learning rate and warm-up (a fresh
    optimiser and scheduler come with the fresh trainer); only the final stage pushes to the Hub."""
    return dataclasses.replace(
        args,
        stage_schedule=f"stage{stage}",
        output_dir=os.path.join(args.output_dir, f"stage{stage}"),
        push_to_hub=args.push_to_hub and stage == 2,
        resume_from_checkpoint=None,
        **args.stage_overrides(stage),
    )


def _recorded_stage(folder: Path, stage_args: LaViTTrainingArguments) -> dict[str, Any]:
    """The card's record of a finished stage read back from its folder (when a resumed run skips it)."""
    state_file = folder / "trainer_state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    return {
        "schedule": stage_args.stage_schedule,
        "steps": state.get("global_step", stage_args.max_steps),
        "learning_rate": stage_args.learning_rate,
        "warmup": stage_args.warmup_steps,
        "weights": " / ".join(
            str(getattr(stage_args, n)) for n in ("ce_loss_weight", "vtop_loss_weight", "trajectory_loss_weight")
        ),
        "log_history": state.get("log_history", []),
    }


def _finish(trainer) -> None:
    """Save the final model, trainer state and card into the trainer's `output_dir`."""
    trainer.save_model()
    trainer.save_state()
    trainer.create_model_card(model_name=Path(trainer.args.output_dir).name)
    # Only the main process writes, and `save_model` has no barrier: without this one the other processes of a
    # two-stage run would load stage 1's folder for stage 2 before (or while) it is written.
    trainer.accelerator.wait_for_everyone()


def run_schedule(
    model,
    args: LaViTTrainingArguments,
    train_dataset,
    eval_dataset=None,
    processing_class=None,
    resume_from_checkpoint: str | bool | None = None,
    **trainer_kwargs,
):
    """Train `model` by `args.stage_schedule` and return the last stage's `LaViTTrainer` (its model is the result).

    `single`, `stage1` and `stage2` run one trainer in `output_dir`. `two_stage` runs stage 1 (the bottleneck) in
    `output_dir/stage1` for `stage1_steps` at `stage1_learning_rate` with `stage1_warmup_ratio`, saves it, then stage
    2 (joint) in `output_dir/stage2` from stage 1's saved weights, with a fresh optimiser and scheduler and its own
    steps, learning rate and warm-up. Each stage saves its final model and card."""
    import torch

    from .lavit_trainer import LaViTTrainer
    from .model_card import stage_record

    if args.stage_schedule != "two_stage":
        trainer = LaViTTrainer(model, args, None, train_dataset, eval_dataset, processing_class, **trainer_kwargs)
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        _finish(trainer)
        return trainer
    output_dir = Path(args.output_dir)
    resume1, resume2 = _resolve_two_stage_resume(resume_from_checkpoint, output_dir)
    stage1_args, stage2_args = _stage_args(args, 1), _stage_args(args, 2)
    if resume2 is None:
        trainer = LaViTTrainer(model, stage1_args, None, train_dataset, eval_dataset, processing_class, **trainer_kwargs)
        trainer.train(resume_from_checkpoint=resume1)
        _finish(trainer)
        history = [stage_record(trainer)]
        del trainer
    else:
        history = [_recorded_stage(output_dir / "stage1", stage1_args)]
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    # Stage 2 starts from stage 1's saved weights (also right under FSDP / DeepSpeed, where the live model is sharded).
    stage2_model, stage2_processor = load_student(output_dir / "stage1", None, stage2_args)
    trainer = LaViTTrainer(
        stage2_model, stage2_args, None, train_dataset, eval_dataset, stage2_processor, stage_history=history,
        **trainer_kwargs,
    )
    trainer.train(resume_from_checkpoint=resume2)
    _finish(trainer)
    return trainer


def main(args: argparse.Namespace | LaViTTrainingArguments | None = None) -> None:
    """Load the dataset and the student, train by the schedule, save, and push with `--push_to_hub`."""
    if args is None:
        from lavit_hf.arguments import parse_with_config

        args = parse_with_config(make_parser(), sys.argv[1:])
    args = to_training_arguments(args)
    if args.model_name_or_path is None:
        raise ValueError("Pass --model_name_or_path (a Qwen2.5-VL or LaViT checkpoint folder).")
    train_dataset, eval_dataset, teacher_hidden_size = load_datasets(args)
    model, processor = load_student(args.model_name_or_path, teacher_hidden_size, args)
    trainer = run_schedule(
        model, args, train_dataset, eval_dataset, processor, resume_from_checkpoint=args.resume_from_checkpoint
    )
    if eval_dataset is not None:
        trainer.evaluate()
        trainer.create_model_card(model_name=Path(trainer.args.output_dir).name)
    if trainer.args.push_to_hub:
        trainer.push_to_hub(dataset_name=args.dataset_name_or_path)
    logger.info("Final model in %s", trainer.args.output_dir)


def cli(argv: Sequence[str] | None = None) -> None:
    """`python -m trainer.train ...` (what `accelerate launch -m trainer.train` runs)."""
    from lavit_hf.arguments import parse_with_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(parse_with_config(make_parser(), list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    cli()


__all__ = ["load_datasets", "load_student", "main", "make_parser", "run_schedule", "to_training_arguments"]
