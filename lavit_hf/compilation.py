"""Regional compilation: `torch.compile` each repeated block of an image-text model in place.

The trainer (`torch_compile=True`) and the teacher extraction (`lavit extract --compile_teacher`) compile the same
blocks the same way, here.
"""

import logging

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


logger = logging.getLogger(__name__)

# Module names that hold a vision tower in transformers' image-text models (Qwen's `visual`, Gemma 3's and LLaVA's
# `vision_tower`).
VISION_MODULE_NAMES = ("visual", "vision_tower")


def repeated_blocks(model: nn.Module, vision: bool = True) -> list[nn.Module]:
    """The repeated blocks of `model`: every decoder layer of the language model and, with `vision`, every block of
    the vision tower, in module order.

    A block is what transformers checkpoints as one unit (a `GradientCheckpointingLayer`: Qwen's decoder layers and
    vision blocks, Gemma 3's decoder layers and SigLIP encoder layers), wherever wrappers put it (DDP's `module`, a
    `PeftModel`); a block lies in the vision tower when a module on its path is named as in `VISION_MODULE_NAMES`.

    Args:
        model (`nn.Module`): an image-text model of transformers, possibly wrapped.
        vision (`bool`, *optional*, defaults to `True`): include the vision tower's blocks.
    """
    blocks = []
    for name, module in model.named_modules():
        if not isinstance(module, GradientCheckpointingLayer):
            continue
        if vision or not set(name.split(".")) & set(VISION_MODULE_NAMES):
            blocks.append(module)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no repeated blocks (GradientCheckpointingLayer) to compile.")
    return blocks


def compile_repeated_blocks(model: nn.Module, vision: bool = True, **compile_kwargs) -> int:
    """`torch.compile` each decoder layer of the language model (and each vision block with `vision`) in place;
    returns how many blocks were compiled.

    Regional compilation, as accelerate's `compile_regions` does, but in place and only where it pays: the layers are
    where a forward's elementwise work (RMSNorm, rotary, SwiGLU, residuals) fuses, and one compiled graph serves every
    layer. The model stays the same object, so its state dict, `save_pretrained` and hooks are those of the eager
    model (a block's hooks run outside its graph); the image-text merge, the masks and the heads (host syncs,
    data-dependent shapes) stay eager rather than breaking a whole-model graph. Call it again to recompile with other
    options.

    Args:
        model (`nn.Module`): an image-text model of transformers, possibly wrapped (DDP, PEFT).
        vision (`bool`, *optional*, defaults to `True`): also compile the vision tower's blocks.
        compile_kwargs: keyword arguments of `torch.compile` (`backend`, `mode`, ...); `None` values are dropped.
    """
    blocks = repeated_blocks(model, vision)
    compile_kwargs = {key: value for key, value in compile_kwargs.items() if value is not None}
    # Both kinds of block run through one code object (the layers' shared `__call__`), each in a few variants (grad
    # mode, masks or none, static then dynamic lengths, attention capture on some layers): more than dynamo's default
    # limit of 8, past which the remaining calls would silently run eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for block in blocks:
        block.compile(**compile_kwargs)
    logger.info("Compiled %d repeated blocks of %s in place.", len(blocks), type(model).__name__)
    return len(blocks)


__all__ = ["VISION_MODULE_NAMES", "compile_repeated_blocks", "repeated_blocks"]
