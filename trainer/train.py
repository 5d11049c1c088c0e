"""`lavit train`: train a LaViT student from a LaViT dataset, in one stage or two (docs/method.md section 3).

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
`output_dir/stage2`. Every checkpoint and final model holds the weights, config, processor, modeling code and card;
with `--use_peft` the adapter instead (see `trainer/lora.py`: base, loading, merge). A rerun never trains a finished
stage again; `--resume_from_checkpoint true` resumes the newest complete checkpoint of the stage that runs.
Multi-GPU runs: `accelerate launch --config_file trainer/accelerate_configs/<ddp|fsdp2|deepspeed_zero2|...>.yaml
-m trainer.train ...` (see `trainer/accelerate_configs/README.md`).
"""

import argparse
import dataclasses
import gc
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .configuration import STAGE_SCHEDULE_FIELDS, LaViTTrainingArguments


logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"
FINISHED_MESSAGE = "%s holds the finished run already: nothing to train (use another output_dir to train again)."


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


def model_type_of(path: str | os.PathLike) -> str | None:
    """The `model_type` of the checkpoint folder (or Hub id) `path`."""
    from transformers import PretrainedConfig

    return PretrainedConfig.get_config_dict(str(path))[0].get("model_type")


def _kbit_device_map(args: LaViTTrainingArguments) -> dict[str, Any]:
    """Where a quantised base is placed: this process's GPU (TRL's `get_kbit_device_map`), else the CPU."""
    import torch
    from accelerate import PartialState

    if torch.cuda.is_available() and not args.use_cpu:
        return {"": PartialState().local_process_index}
    return {"": "cpu"}


def load_student(path: str | os.PathLike, teacher_hidden_size: int | None, args: LaViTTrainingArguments):
    """A LaViT student and its processor from `path`: a LaViT checkpoint as it is, the checkpoint of a LoRA run with
    its adapter (trainable, on its base), or a base checkpoint of any supported family converted into a student by
    `lavit_hf.lavit_from_base` (K latent tokens, V_top head of the data's width).

    `model_dtype`, `attn_implementation` and the quantisation of `load_in_4bit` / `load_in_8bit` go into
    `from_pretrained`. A V_top width that disagrees with the data is an error."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from lavit_hf import STUDENT_FAMILIES, lavit_from_base

    from .lora import base_model_of, is_lora_checkpoint, load_lora_checkpoint, quantization_config

    dtype = getattr(torch, args.model_dtype)
    load_kwargs: dict[str, Any] = {"dtype": dtype}
    if args.attn_implementation is not None:
        load_kwargs["attn_implementation"] = args.attn_implementation
    quantization = quantization_config(args)
    if quantization is not None:
        load_kwargs.update(quantization_config=quantization, device_map=_kbit_device_map(args))
    model_type = None if is_lora_checkpoint(path) else model_type_of(path)
    if model_type is None:
        logger.info("%s is a LoRA checkpoint: training continues its adapter.", path)
        model = load_lora_checkpoint(path, is_trainable=True, **load_kwargs)
        processor = AutoProcessor.from_pretrained(path)
    elif model_type in {family.model_type for family in STUDENT_FAMILIES.values()}:
        model = AutoModelForImageTextToText.from_pretrained(path, **load_kwargs)
        processor = AutoProcessor.from_pretrained(path)
    else:  # a base checkpoint of a supported family, converted; other model types are refused by name
        if quantization is not None:
            raise ValueError(
                f"{path}: a base checkpoint is converted at full precision; with use_peft `lavit train` converts it "
                "into output_dir/base_model first and quantises that."
            )
        model, processor = lavit_from_base(
            path, num_latent_tokens=args.num_latent_tokens, teacher_hidden_size=teacher_hidden_size, seed=args.seed
        )
        # The conversion loads float32 with the checkpoint's attention: apply the loading options here.
        model = model.to(dtype)
        if args.attn_implementation is not None:
            model.set_attn_implementation(args.attn_implementation)
    base = base_model_of(model)
    if teacher_hidden_size is not None and base.config.teacher_hidden_size != teacher_hidden_size:
        raise ValueError(
            f"{path}: its V_top head has width {base.config.teacher_hidden_size} but the dataset's teacher features "
            f"have {teacher_hidden_size}."
        )
    base.processor = processor
    return model, processor


def lora_base(args: LaViTTrainingArguments, teacher_hidden_size: int | None) -> str:
    """The LaViT checkpoint a LoRA run's adapter sits on (`trainer/lora.py`): `model_name_or_path` when it is a
    LaViT checkpoint (or a LoRA one), else its conversion, written once to `output_dir/base_model` (under a
    temporary name, then renamed, so a kill never leaves a half-written base) and reused by a rerun."""
    from accelerate import PartialState

    from lavit_hf import STUDENT_FAMILIES

    from .lora import BASE_MODEL_FOLDER, is_lora_checkpoint

    path = args.model_name_or_path
    if is_lora_checkpoint(path) or model_type_of(path) in {family.model_type for family in STUDENT_FAMILIES.values()}:
        return path
    folder = Path(args.output_dir) / BASE_MODEL_FOLDER
    state = PartialState()
    with state.main_process_first():
        if state.is_main_process and not (folder / "config.json").is_file():
            logger.info("Converting %s into the LaViT base of the adapter: %s", path, folder)
            full = dataclasses.replace(args, use_peft=False, load_in_4bit=False, load_in_8bit=False)
            model, _ = load_student(path, teacher_hidden_size, full)
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            model.save_pretrained(partial)  # weights, config, processor and modeling code
            partial.rename(folder)
            del model
            gc.collect()
    config = json.loads((folder / "config.json").read_text())
    expected = {"num_latent_tokens": args.num_latent_tokens, "teacher_hidden_size": teacher_hidden_size}
    wrong = {key: config.get(key) for key, value in expected.items() if value is not None and config.get(key) != value}
    if wrong:
        raise ValueError(f"{folder} was converted with {wrong}, this run needs {expected}: use another output_dir.")
    return str(folder)


def load_datasets(args: LaViTTrainingArguments):
    """The training split and, with `eval_split`, the evaluation split; targets read as torch tensors (about 5x
    faster than nested lists, docs/pitfalls.md, datasets) while the image and text columns stay Python objects."""
    from datasets import load_dataset

    from lavit_hf import schema

    if args.dataset_name_or_path is None:
        raise ValueError("Pass --dataset_name_or_path (a LaViT dataset written by `lavit extract`).")
    train_dataset = with_target_format(load_dataset(args.dataset_name_or_path, split="train"))
    eval_dataset = None
    if args.eval_split is not None:
        source = args.eval_dataset_name_or_path or args.dataset_name_or_path
        eval_dataset = with_target_format(load_dataset(source, split=args.eval_split))
    width = schema.teacher_hidden_size_of(train_dataset, f"{args.dataset_name_or_path} (train)")
    return train_dataset, eval_dataset, width


def with_target_format(dataset):
    """`dataset` with its numeric teacher-target columns formatted as torch tensors, the others left as they are."""
    from lavit_hf import schema

    trajectories = [schema.trajectory_column(method) for method in schema.trajectory_methods(dataset.column_names)]
    numeric = [schema.TEACHER_GRID, schema.VTOP, schema.VTOP_TOKENS, *trajectories]
    columns = [name for name in numeric if name in dataset.column_names]
    return dataset.with_format("torch", columns=columns, output_all_columns=True)


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether the checkpoint `folder` was saved to the end: the Trainer writes `trainer_state.json` after the
    weights, optimiser, scheduler and RNG states, so a readable one means a kill did not tear the checkpoint."""
    try:
        json.loads((Path(folder) / TRAINER_STATE_NAME).read_text())
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest complete `checkpoint-N` of `folder` (incomplete ones are skipped with a warning), or `None`."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    steps = {}
    for path in folder.iterdir():
        match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", path.name)
        if match and path.is_dir():
            steps[int(match.group(1))] = path
    for step in sorted(steps, reverse=True):
        if is_complete_checkpoint(steps[step]):
            return str(steps[step])
        logger.warning("Skipping %s: incomplete (no %s; killed while saving?)", steps[step], TRAINER_STATE_NAME)
    return None


def finished_state(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The trainer state of the finished run (or stage) in `folder`, `None` if it did not finish: `_finish` writes
    `trainer_state.json` at the top of the folder after the final model, and nothing else does."""
    try:
        return json.loads((Path(folder) / TRAINER_STATE_NAME).read_text())
    except (OSError, ValueError):
        return None


def _resume_from(resume: str | bool | None, folder: Path) -> str | None:
    """The checkpoint a run in `folder` resumes: none; for `True` (or "true") the newest complete one (none yet:
    start from the beginning); or the complete checkpoint at the path given."""
    if resume in (None, False, "", "false", "False"):
        return None
    if resume in (True, "true", "True"):
        checkpoint = last_complete_checkpoint(folder)
        if checkpoint is None:
            logger.info("No complete checkpoint in %s yet: training starts from the beginning.", folder)
        return checkpoint
    if not is_complete_checkpoint(resume):
        raise ValueError(
            f"resume_from_checkpoint {resume}: not a complete checkpoint (no readable {TRAINER_STATE_NAME}; killed "
            "while saving?). Pass --resume_from_checkpoint true to take the newest complete one."
        )
    return str(resume)


def _two_stage_resume(resume: str | bool | None, output_dir: Path, stage1_done: bool) -> tuple[str | None, str | None]:
    """`(stage-1 checkpoint, stage-2 checkpoint)` a `two_stage` run resumes, at most one set: `True` resumes the
    stage that runs (stage 2 once stage 1 finished); a path resumes the stage whose folder holds it."""
    stage1, stage2 = output_dir / "stage1", output_dir / "stage2"
    if resume in (None, False, "", "false", "False", True, "true", "True"):
        return (None, _resume_from(resume, stage2)) if stage1_done else (_resume_from(resume, stage1), None)
    parent = Path(resume).resolve().parent
    if parent == stage2.resolve() and stage1_done:
        return None, _resume_from(resume, stage2)
    if parent == stage1.resolve() and not stage1_done:
        return _resume_from(resume, stage1), None
    raise ValueError(
        f"resume_from_checkpoint {resume}: this two-stage run "
        + ("has finished stage 1, so it resumes a checkpoint of " + str(stage2) if stage1_done else
           "is in stage 1, so it resumes a checkpoint of " + str(stage1))
        + " (or pass true for the newest complete one)."
    )


def _stage_args(args: LaViTTrainingArguments, stage: int) -> LaViTTrainingArguments:
    """Arguments of stage `stage` of a two-stage run: its own folder, steps, learning rate and warm-up (a fresh
    optimiser and scheduler come with the fresh trainer); only the final stage pushes to the Hub."""
    defaults = {item.name: item.default for item in dataclasses.fields(LaViTTrainingArguments)}
    return dataclasses.replace(
        args,
        stage_schedule=f"stage{stage}",
        output_dir=os.path.join(args.output_dir, f"stage{stage}"),
        push_to_hub=args.push_to_hub and stage == 2,
        resume_from_checkpoint=None,
        # The other stage's settings are not this stage's (they stay in the two-stage arguments).
        **{name: defaults[name] for name in STAGE_SCHEDULE_FIELDS[3 - stage]},
        **args.stage_overrides(stage),
    )


def _recorded_stage(folder: Path, stage_args: LaViTTrainingArguments) -> dict[str, Any]:
    """The card's record of a finished stage read back from its folder (when a resumed run skips it)."""
    state = finished_state(folder) or {}
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
    """Save the final model, card and trainer state into the trainer's `output_dir`; the state goes last, since
    its presence marks the run (or stage) as finished (`finished_state`)."""
    trainer.save_model()
    trainer.create_model_card(model_name=Path(trainer.args.output_dir).name)
    trainer.save_state()
    # Only the main process writes, and `save_model` has no barrier: without this one the other processes of a
    # two-stage run would load stage 1's folder for stage 2 before (or while) it is written.
    trainer.accelerator.wait_for_everyone()


def finished_run(args: LaViTTrainingArguments) -> Path | None:
    """The folder of the final model when the run `args` describes has finished already, else `None`."""
    final = Path(args.output_dir) / ("stage2" if args.stage_schedule == "two_stage" else "")
    return final if finished_state(final) is not None else None


def run_schedule(
    model,
    args: LaViTTrainingArguments,
    train_dataset,
    eval_dataset=None,
    processing_class=None,
    resume_from_checkpoint: str | bool | None = None,
    peft_config=None,
    **trainer_kwargs,
):
    """Train `model` by `args.stage_schedule` and return the last stage's `LaViTTrainer` (its model is the result),
    or `None` when the run had finished already (nothing is trained or written again).

    `single`, `stage1` and `stage2` run one trainer in `output_dir`. `two_stage` runs stage 1 (the bottleneck) in
    `output_dir/stage1` for `stage1_steps` at `stage1_learning_rate` with `stage1_warmup_ratio`, saves it, then stage
    2 (joint) in `output_dir/stage2` from stage 1's saved weights (under LoRA: stage 1's adapter, trained on), with a
    fresh optimiser and scheduler and its own steps, learning rate and warm-up. Each stage saves its final model and
    card. A finished stage is never trained again: a rerun (or `resume_from_checkpoint`) goes on with the stage
    that did not finish, from its newest complete checkpoint when resuming."""
    import torch

    from .lavit_trainer import LaViTTrainer
    from .lora import is_peft_model
    from .model_card import stage_record

    done = finished_run(args)
    if done is not None:
        logger.warning(FINISHED_MESSAGE, done)
        return None
    output_dir = Path(args.output_dir)
    if args.stage_schedule != "two_stage":
        trainer = LaViTTrainer(
            model, args, None, train_dataset, eval_dataset, processing_class, peft_config=peft_config, **trainer_kwargs
        )
        trainer.train(resume_from_checkpoint=_resume_from(resume_from_checkpoint, output_dir))
        _finish(trainer)
        return trainer
    stage1_args, stage2_args = _stage_args(args, 1), _stage_args(args, 2)
    stage1_done = finished_state(output_dir / "stage1") is not None
    resume1, resume2 = _two_stage_resume(resume_from_checkpoint, output_dir, stage1_done)
    lora = peft_config is not None or args.use_peft or is_peft_model(model)
    if stage1_done:
        logger.warning("Stage 1 finished already in %s: it is not trained again.", output_dir / "stage1")
        history = [_recorded_stage(output_dir / "stage1", stage1_args)]
    else:
        trainer = LaViTTrainer(
            model, stage1_args, None, train_dataset, eval_dataset, processing_class, peft_config=peft_config,
            **trainer_kwargs,
        )  # fmt: skip
        trainer.train(resume_from_checkpoint=resume1)
        _finish(trainer)
        history = [stage_record(trainer)]
        del trainer
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    # Stage 2 starts from stage 1's saved weights (also right under FSDP / DeepSpeed, where the live model is sharded);
    # under LoRA from stage 1's adapter on the same base.
    stage2_model, stage2_processor = load_student(output_dir / "stage1", None, stage2_args)
    if lora and not is_peft_model(stage2_model):
        raise ValueError(f"{output_dir / 'stage1'} holds a full model, but this run trains a LoRA adapter.")
    trainer = LaViTTrainer(
        stage2_model, stage2_args, None, train_dataset, eval_dataset, stage2_processor, stage_history=history,
        **trainer_kwargs,
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume2)
    _finish(trainer)
    return trainer


def main(args: argparse.Namespace | LaViTTrainingArguments | None = None, peft_config=None) -> None:
    """Load the dataset and the student, train by the schedule, save, and push with `--push_to_hub`.

    `peft_config` (a `peft.LoraConfig`) trains an adapter with it, as `--use_peft` does with the `lora_*` flags."""
    if args is None:
        from lavit_hf.arguments import parse_with_config

        args = parse_with_config(make_parser(), sys.argv[1:])
    args = to_training_arguments(args)
    if args.model_name_or_path is None:
        raise ValueError("Pass --model_name_or_path (a Qwen2.5-VL or LaViT checkpoint folder).")
    done = finished_run(args)
    if done is not None:
        logger.warning(FINISHED_MESSAGE, done)
        return
    train_dataset, eval_dataset, teacher_hidden_size = load_datasets(args)
    path = args.model_name_or_path
    if args.use_peft or peft_config is not None:
        path = lora_base(args, teacher_hidden_size)
    model, processor = load_student(path, teacher_hidden_size, args)
    trainer = run_schedule(
        model, args, train_dataset, eval_dataset, processor, resume_from_checkpoint=args.resume_from_checkpoint,
        peft_config=peft_config,
    )  # fmt: skip
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


__all__ = [
    "finished_run",
    "is_complete_checkpoint",
    "last_complete_checkpoint",
    "load_datasets",
    "load_student",
    "lora_base",
    "main",
    "make_parser",
    "run_schedule",
    "to_training_arguments",
    "with_target_format",
]
