"""`--speed_recipe`: one flag for the fastest training recipe that applies every update, defined once
(`trainer.configuration.SPEED_RECIPES`) for `lavit train` and `bench/train_step.py --recipe` alike."""

import importlib.util
from pathlib import Path

import pytest
import torch

from trainer import LaViTTrainer, LaViTTrainingArguments
from trainer.configuration import SPEED_RECIPES, autocasts_to_bf16
from trainer.train import make_parser


REPO_ROOT = Path(__file__).resolve().parents[1]


def parse(tmp_path, *argv: str) -> LaViTTrainingArguments:
    """`lavit train`'s arguments from a command line."""
    (args,) = make_parser().parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--use_cpu", *argv])
    return args


def load_train_step_bench():
    spec = importlib.util.spec_from_file_location("train_step_bench", REPO_ROOT / "bench" / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bf16_kahan_sets_bf16_weights_no_checkpointing_and_compiled_blocks(tmp_path, tiny_lavit):
    args = parse(tmp_path, "--speed_recipe", "bf16_kahan")
    assert (args.model_dtype, args.activation_checkpointing, args.torch_compile) == ("bfloat16", False, True)
    assert args.gradient_checkpointing is False  # transformers' deprecated alias follows
    # bf16 weights train with Kahan-compensated AdamW (the trainer's choice for them).
    from trainer.kahan_adamw import KahanAdamW

    cls, _ = LaViTTrainer.get_optimizer_cls_and_kwargs(args, tiny_lavit[0].to(torch.bfloat16))
    assert cls is KahanAdamW
    # Repeating a recipe's own value is no conflict.
    assert parse(tmp_path, "--speed_recipe", "bf16_kahan", "--model_dtype", "bfloat16").model_dtype == "bfloat16"


def test_default_recipe_keeps_the_reference_defaults_and_explicit_fields(tmp_path):
    args = parse(tmp_path)
    assert (args.speed_recipe, args.model_dtype, args.activation_checkpointing) == ("default", "float32", True)
    assert args.torch_compile is False  # --use_cpu
    args = parse(tmp_path, "--model_dtype", "bfloat16", "--activation_checkpointing", "false", "--torch_compile", "true")
    assert (args.model_dtype, args.activation_checkpointing, args.torch_compile) == ("bfloat16", False, True)


@pytest.mark.parametrize(
    ("flag", "value"), [("activation_checkpointing", "true"), ("model_dtype", "float32"), ("torch_compile", "false")]
)
def test_a_conflicting_setting_is_refused_by_name(tmp_path, flag, value):
    with pytest.raises(ValueError, match=rf"speed_recipe='bf16_kahan' sets .* it conflicts with {flag}="):
        parse(tmp_path, "--speed_recipe", "bf16_kahan", f"--{flag}", value)


def test_the_bench_times_the_recipe_the_trainer_trains():
    bench = load_train_step_bench()
    args = bench.make_parser().parse_args(["--device", "cpu", "--recipe", "bf16_kahan"])
    bench.apply_recipe(args)
    recipe = SPEED_RECIPES["bf16_kahan"]
    assert args.dtype == recipe["model_dtype"]
    assert args.no_checkpointing is not recipe["activation_checkpointing"]
    assert args.compile == ("all" if recipe["torch_compile"] else "none")
    args = bench.make_parser().parse_args(["--device", "cpu"])
    bench.apply_recipe(args)
    assert (args.dtype, args.no_checkpointing, args.compile) == ("float32", False, "none")
    with pytest.raises(SystemExit, match="conflicts with --dtype float32"):
        bench.apply_recipe(bench.make_parser().parse_args(["--recipe", "bf16_kahan", "--dtype", "float32"]))


def test_bf16_weights_train_without_autocast_as_the_bench_times_them(tmp_path):
    # Autocast is mixed precision over float32 weights; over bf16 weights it would only add casts (the losses upcast
    # themselves), and the bench, which shares the rule, times bf16 weights without it.
    assert autocasts_to_bf16("float32", cuda_bf16=True)
    assert not autocasts_to_bf16("bfloat16", cuda_bf16=True)
    assert not autocasts_to_bf16("float32", cuda_bf16=False)
    assert parse(tmp_path, "--speed_recipe", "bf16_kahan").bf16 is False
    assert parse(tmp_path, "--model_dtype", "bfloat16").bf16 is False
    assert parse(tmp_path, "--model_dtype", "bfloat16", "--bf16", "true").bf16 is True  # an explicit choice stands
