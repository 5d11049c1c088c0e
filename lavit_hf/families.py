"""The student families LaViT supports, by name, and the one entry point that converts a base checkpoint of any one.

A family is registered here once, by the base `model_type` it converts from; adding one means a configuration file,
a modeling file (each a thin binding of the LaViT core) and one entry of `STUDENT_FAMILIES`.

Example:

```python
>>> from lavit_hf.families import student_family
>>> student_family("qwen3_vl").config_class.model_type
'lavit_qwen3_vl'
>>> try:
...     student_family("gemma3")
... except ValueError as error:
...     print(str(error).split(" (or")[0])
model_type 'gemma3' has no LaViT student family; supported: qwen2_vl, qwen2_5_vl, qwen3_vl

```
"""

import logging
import os
from dataclasses import dataclass

from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.processing_utils import ProcessorMixin

from .configuration_lavit import LaViTConfig
from .configuration_lavit_qwen2_vl import LaViTQwen2VLConfig
from .configuration_lavit_qwen3_vl import LaViTQwen3VLConfig
from .modeling_lavit import LaViTForConditionalGeneration, LaViTModel
from .modeling_lavit_qwen2_vl import LaViTQwen2VLForConditionalGeneration, LaViTQwen2VLModel
from .modeling_lavit_qwen3_vl import LaViTQwen3VLForConditionalGeneration, LaViTQwen3VLModel


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudentFamily:
    """One supported student family: the LaViT classes that bind it.

    Attributes:
        config_class (`type`): the LaViT configuration (its `model_type` and `base_model_type`).
        model_class (`type`): the LaViT base model.
        for_generation_class (`type`): the LaViT student (`...ForConditionalGeneration`).
    """

    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    for_generation_class: type[PreTrainedModel]

    @property
    def base_model_type(self) -> str:
        return self.config_class.base_model_type

    @property
    def model_type(self) -> str:
        return self.config_class.model_type


STUDENT_FAMILIES: dict[str, StudentFamily] = {
    family.base_model_type: family
    for family in (
        StudentFamily(LaViTQwen2VLConfig, LaViTQwen2VLModel, LaViTQwen2VLForConditionalGeneration),
        StudentFamily(LaViTConfig, LaViTModel, LaViTForConditionalGeneration),
        StudentFamily(LaViTQwen3VLConfig, LaViTQwen3VLModel, LaViTQwen3VLForConditionalGeneration),
    )
}


def student_family(model_type: str, source: str | None = None) -> StudentFamily:
    """The family of a base `model_type` (`"qwen2_5_vl"`) or of a LaViT one (`"lavit"`), refusing others by name
    (the error starts with `source`, the checkpoint, when given)."""
    for family in STUDENT_FAMILIES.values():
        if model_type in (family.base_model_type, family.model_type):
            return family
    prefix = f"{source}: " if source is not None else ""
    raise ValueError(
        f"{prefix}model_type {model_type!r} has no LaViT student family; supported: {', '.join(STUDENT_FAMILIES)} "
        f"(or a LaViT checkpoint of one: {', '.join(family.model_type for family in STUDENT_FAMILIES.values())})."
    )


def lavit_from_base(
    base: str | os.PathLike | PreTrainedModel,
    processor: ProcessorMixin | None = None,
    num_latent_tokens: int = 4,
    teacher_hidden_size: int | None = None,
    seed: int = 0,
    **config_overrides,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Convert a base checkpoint of any supported family into the matching LaViT student (see
    `LaViTForConditionalGenerationMixin.from_base`): every base weight loaded, `<lvr1>` ... `<lvrK>` added and
    initialised, the processor attached. A model type without a family is refused by name, listing the supported ones.

    Args:
        base (`str`, `os.PathLike` or `PreTrainedModel`):
            A checkpoint folder (model and processor) or a loaded model of a supported family.
        processor (`ProcessorMixin`, *optional*):
            Its processor; loaded from `base` when `base` is a folder and this is omitted.
        num_latent_tokens (`int`, *optional*, defaults to 4):
            K.
        teacher_hidden_size (`int`, *optional*):
            Width of the teacher features (from the data); without it the model has no V_top head.
        seed (`int`, *optional*, defaults to 0):
            Seeds the new heads and the noise of the latent embeddings.
        config_overrides:
            Further LaViT config fields (stage, loss weights, ...).
    """
    from_folder = not isinstance(base, PreTrainedModel)
    model_type = AutoConfig.from_pretrained(base).model_type if from_folder else base.config.model_type
    family = student_family(model_type, str(base) if from_folder else type(base).__name__)
    if model_type == family.model_type:
        raise ValueError(f"{base}: already a LaViT checkpoint ({model_type!r}); load it with from_pretrained.")
    logger.info("Converting a %s checkpoint into %s", model_type, family.for_generation_class.__name__)
    return family.for_generation_class.from_base(
        base, processor, num_latent_tokens, teacher_hidden_size, seed, **config_overrides
    )


__all__ = ["STUDENT_FAMILIES", "StudentFamily", "lavit_from_base", "student_family"]
