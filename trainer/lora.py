"""LoRA and QLoRA for LaViT students (PEFT): the adapter's config, its base, and the merge into a full checkpoint.

What trains under LoRA, and why each part: the adapter on the language model's linear projections; the two heads in
full (`modules_to_save`: they start new, an adapter on a random matrix would learn nothing useful); the latent-token
rows of the input embeddings and of an untied LM head (`trainable_token_indices`: new tokens need rows of their
own). Nothing else of the base moves.

The adapter's base is always a LaViT checkpoint on disk, so that every checkpoint is a plain PEFT adapter: a LaViT
`model_name_or_path` is used as it is; a Qwen2.5-VL one is converted once into `output_dir/base_model` (full
weights, processor and modeling code). A checkpoint (or final model) of a LoRA run holds the adapter
(`adapter_model.safetensors`, `adapter_config.json` naming the base), the processor, the card and
`lavit_config.json`, the LaViT config the run trained with (its stage and loss weights). It loads with

```python
model = AutoModelForImageTextToText.from_pretrained("<checkpoint>", trust_remote_code=True)  # base + adapter
```

and merges into a full LaViT checkpoint (weights, config, processor, modeling code) with

```bash
python -m trainer.lora <checkpoint> <merged-folder>
```
"""

import argparse
import copy
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


logger = logging.getLogger(__name__)

LAVIT_CONFIG_NAME = "lavit_config.json"
BASE_MODEL_FOLDER = "base_model"
# The heads start new (docs/method.md section 2): they train in full, beside the adapter.
HEAD_MODULES = ("vtop_head", "trajectory_query")
# Every linear projection of the language model's decoder layers; the vision tower stays frozen (reference recipe).
DEFAULT_TARGET_MODULES = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
# Kept out of quantisation: the heads and the LM head train (in part) and a quantised matrix cannot; the frozen
# vision tower produces the image features the teacher targets are compared on, so it keeps its precision.
NOT_QUANTISED = ["lm_head", *HEAD_MODULES, "model.visual"]


def require_peft():
    """The `peft` module, or an `ImportError` naming the extra that installs it."""
    try:
        import peft
    except ImportError as error:
        raise ImportError("LoRA training needs PEFT: pip install 'lavit-hf[peft]' (or 'lavit-hf[qlora]').") from error
    return peft


def is_peft_model(model: nn.Module) -> bool:
    """Whether `model` is a `peft.PeftModel` (False when PEFT is not installed)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def base_model_of(model: nn.Module) -> nn.Module:
    """The LaViT model under a `PeftModel` (`get_base_model()`), or `model` itself."""
    return model.get_base_model() if is_peft_model(model) else model


def lora_config(model: nn.Module, args, peft_config=None):
    """The `peft.LoraConfig` of a LaViT student: `peft_config` (or one built from `args`' `lora_*` fields), with the
    two heads added to `modules_to_save` and the latent-token rows to `trainable_token_indices`.

    Args:
        model (`LaViTForConditionalGeneration`): the student the adapter goes on.
        args (`LaViTTrainingArguments`): `lora_r`, `lora_alpha`, `lora_dropout`, `lora_target_modules`.
        peft_config (`peft.LoraConfig`, *optional*): a config of the caller's; it is copied, not changed.
    """
    require_peft()
    from peft import LoraConfig

    if peft_config is None:
        peft_config = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=args.lora_target_modules or DEFAULT_TARGET_MODULES,
            bias="none",
        )
    if not isinstance(peft_config, LoraConfig):
        raise TypeError(
            f"peft_config is a {type(peft_config).__name__}: a LaViT student needs a LoraConfig (its latent-token "
            "rows train through trainable_token_indices, which LoRA has)."
        )
    config = copy.deepcopy(peft_config)
    base = base_model_of(model)
    heads = [name for name in HEAD_MODULES if getattr(base, name, None) is not None]
    config.modules_to_save = sorted({*(config.modules_to_save or []), *heads})
    latent_ids = list(base.config.latent_token_ids or [])
    if not latent_ids:
        raise ValueError("The student has no latent_token_ids in its config: is it a LaViT checkpoint?")
    given = config.trainable_token_indices
    tokens = dict(given) if isinstance(given, dict) else ({"embed_tokens": list(given)} if given else {})
    layers = ["embed_tokens"] if base.config.tie_word_embeddings else ["embed_tokens", "lm_head"]
    for layer in layers:
        tokens[layer] = sorted({*tokens.get(layer, []), *latent_ids})
    config.trainable_token_indices = tokens
    return config


def quantization_config(args):
    """The `BitsAndBytesConfig` of `load_in_4bit` / `load_in_8bit` (TRL's `get_quantization_config`, with the heads,
    the LM head and the vision tower kept out), or `None`."""
    if not (args.load_in_4bit or args.load_in_8bit):
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise ImportError("load_in_4bit / load_in_8bit need bitsandbytes: pip install 'lavit-hf[qlora]'.") from error
    from transformers import BitsAndBytesConfig

    if args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=NOT_QUANTISED)
    # bf16 compute under bf16 autocast or over bf16 weights (which train without autocast).
    bf16_compute = args.bf16 or args.model_dtype == "bfloat16"
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if bf16_compute else torch.float32,
        bnb_4bit_quant_type=args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=args.use_bnb_nested_quant,
        llm_int8_skip_modules=NOT_QUANTISED,
    )


def wrap_with_lora(model: nn.Module, args, peft_config=None) -> nn.Module:
    """`model` wrapped in a `PeftModel` with `lora_config(model, args, peft_config)`; a quantised base is prepared
    for k-bit training first (PEFT's `prepare_model_for_kbit_training`, as TRL does)."""
    require_peft()
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_quantized", False):
        # The Trainer turns activation checkpointing on itself (non-reentrant, which needs no input hook).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, lora_config(model, args, peft_config))


def save_lavit_config(model: nn.Module, output_dir: str | os.PathLike) -> Path:
    """Write the LaViT config the adapter was trained with (stage, loss weights) beside the adapter."""
    path = Path(output_dir) / LAVIT_CONFIG_NAME
    base_model_of(model).config.to_json_file(path)
    return path


def is_lora_checkpoint(folder: str | os.PathLike) -> bool:
    return (Path(folder) / "adapter_config.json").is_file()


def load_lora_checkpoint(folder: str | os.PathLike, is_trainable: bool = False, **from_pretrained_kwargs):
    """The LaViT base named by the adapter of `folder` with the adapter on it (a `PeftModel`); `from_pretrained_kwargs`
    (dtype, quantization_config, ...) go to the base's `from_pretrained`."""
    require_peft()
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForImageTextToText

    import lavit_hf  # noqa: F401  (registers every LaViT family with the Auto classes)

    adapter = PeftConfig.from_pretrained(str(folder))
    # The Auto class picks the base's own family (Qwen2-VL, Qwen2.5-VL or Qwen3-VL student).
    base = AutoModelForImageTextToText.from_pretrained(adapter.base_model_name_or_path, **from_pretrained_kwargs)
    if is_trainable and getattr(base, "is_quantized", False):
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)  # as `wrap_with_lora` does
    return PeftModel.from_pretrained(base, str(folder), is_trainable=is_trainable)


def merge_lora_checkpoint(
    checkpoint: str | os.PathLike, output_dir: str | os.PathLike, dtype: torch.dtype = torch.float32
) -> Path:
    """Merge the adapter of a LoRA checkpoint into its base and save a full LaViT checkpoint in `output_dir`: weights
    (adapter, heads and latent rows merged), the config the run trained with, processor, modeling code and card. It
    loads with `AutoModelForImageTextToText.from_pretrained(output_dir, trust_remote_code=True)`.

    A QLoRA adapter merges into the base at full precision (`dtype`), not into its 4-bit copy."""
    from transformers import AutoProcessor

    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    if not is_lora_checkpoint(checkpoint):
        raise ValueError(f"{checkpoint}: no adapter_config.json, so not a checkpoint of a LoRA run.")
    model = load_lora_checkpoint(checkpoint, dtype=dtype).merge_and_unload()
    trained = checkpoint / LAVIT_CONFIG_NAME
    if trained.is_file():
        values = json.loads(trained.read_text())
        # The LaViT fields only (stage, loss weights, ...): dtype and quantisation stay those of the merged weights.
        for name in type(model.config).__annotations__:
            if name in values:
                setattr(model.config, name, values[name])
    model.config.use_cache = True
    model.processor = AutoProcessor.from_pretrained(checkpoint)
    model.save_pretrained(output_dir)
    if (checkpoint / "README.md").is_file():
        shutil.copy2(checkpoint / "README.md", output_dir / "README.md")
    logger.info("Merged %s into a full LaViT checkpoint in %s", checkpoint, output_dir)
    return output_dir


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Merge a LaViT LoRA checkpoint's adapter into a full checkpoint.")
    parser.add_argument("checkpoint", help="a checkpoint or final model folder of a `lavit train --use_peft` run")
    parser.add_argument("output_dir", help="where to write the full LaViT checkpoint")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="merged weights' dtype")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    merge_lora_checkpoint(args.checkpoint, args.output_dir, getattr(torch, args.dtype))


if __name__ == "__main__":
    main()


__all__ = [
    "BASE_MODEL_FOLDER",
    "DEFAULT_TARGET_MODULES",
    "LAVIT_CONFIG_NAME",
    "base_model_of",
    "is_lora_checkpoint",
    "is_peft_model",
    "load_lora_checkpoint",
    "lora_config",
    "merge_lora_checkpoint",
    "quantization_config",
    "save_lavit_config",
    "wrap_with_lora",
]
