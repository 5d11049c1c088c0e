"""LaViT (arXiv 2601.10129) on any Qwen-VL family: the family-agnostic model, written once as two mixins.

A family binding (`modeling_lavit.py` for Qwen2.5-VL, `modeling_lavit_qwen2_vl.py`, `modeling_lavit_qwen3_vl.py`) is

    class LaViT<Family>Model(LaViTModelMixin, <Family>Model)
    class LaViT<Family>ForConditionalGeneration(LaViTForConditionalGenerationMixin, <Family>ForConditionalGeneration)

and differs from its family in nothing else:
- `LaViTModelMixin.forward` builds the attention mask from a mask *function* when a rule beyond causal + padding
  applies: the stage-1 bottleneck (docs/method.md section 3) and the `mask_latent` diagnostic (section 4), handed to
  the text model in its attention implementation's own format (`masks.py`).
- `LaViTForConditionalGenerationMixin` adds the V_top head and the trajectory head (section 2, `heads.py`), reads
  the final hidden state of the latent tokens and of the image tokens (`token_layout.py`), and returns each loss term
  (`losses.py`).

Changes from the reference code (docs/method.md section 6): the bottleneck is a boolean rule combined with causality
and padding by `create_causal_mask` (the reference's 0/1 float mask blocked nothing); the trajectory is read at the
image tokens located by `image_token_id` and checked against `image_grid_thw` (the reference read the system prompt and
got a loss of 0 behind a bare `except`); bad inputs and bad targets raise `ValueError` naming the sample.

This file is copied next to saved checkpoints (remote code): it imports only torch, transformers and its siblings.
"""

import contextlib
import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.processing_utils import ProcessorMixin, Unpack
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.utils import TransformersKwargs

from .attention import (  # importing registers PACKED_VISION_ATTENTION: a trained config may name it
    PACKED_VISION_ATTENTION,  # noqa: F401
    LatentAttentionRecorder,
    observing_attention,
)
from .heads import (
    align_trajectory_target,
    build_vtop_head,
    check_trajectory_target,
    check_vtop_target,
    latent_attention_trajectory,
    latent_head_input,
    pool_vtop_target,
    predict_trajectory,
    trajectory_target_problems,
    vtop_target_problems,
)
from .layout import latent_token_strings
from .losses import (
    ce_enters_loss,
    combine_losses,
    labelled_causal_lm_loss,
    loss_weights,
    trajectory_kl_loss,
    vtop_cosine_loss,
)
from .masks import is_prepared_mask, lavit_mask_function, text_attention_masks
from .token_layout import TokenLayout, locate_tokens


def register_base_conversions(pairs: dict[str, type]) -> None:
    """Let our class names load their family's checkpoints.

    A base family's legacy key layout (Qwen2-VL's and Qwen2.5-VL's `model.layers.*`, `visual.*`) is converted by rules
    looked up by class name or model_type, and a new class name matches none, so `from_pretrained(<a base
    checkpoint>)` would silently leave the language model random (docs/pitfalls.md, "Tokens, checkpoints, remote
    code"). `pairs` maps each of our class names to the family class whose rules it reuses; a family without rules (its
    checkpoints already use the current layout) registers nothing.
    """
    for ours, base in pairs.items():
        rules = get_checkpoint_conversion_mapping(base.__name__)
        if rules is None:
            rules = get_checkpoint_conversion_mapping(base.config_class.model_type)
        if rules is not None:
            register_checkpoint_conversion_mapping(ours, rules, overwrite=True)


def add_latent_tokens(tokenizer: PreTrainedTokenizerBase, num_latent_tokens: int) -> list[int]:
    """Add `<lvr1>` ... `<lvrK>` to `tokenizer` as special tokens (idempotent) and return their ids in order."""
    tokens = latent_token_strings(num_latent_tokens)
    tokenizer.add_tokens(tokens, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if len(set(ids)) != num_latent_tokens or tokenizer.unk_token_id in ids:
        raise ValueError(f"Adding the latent tokens {tokens} gave ids {ids}: expected {num_latent_tokens} new ids.")
    return ids


@dataclass
class LaViTCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*):
        `ce_loss_weight * loss_ce + vtop_loss_weight * loss_vtop + trajectory_loss_weight * loss_traj`, over the
        terms whose targets were given (CE only when `labels` were given, and in stage 1 only with `ce_in_stage1`).
    loss_ce (`torch.FloatTensor` of shape `()`, *optional*):
        Next-token cross-entropy over the labelled tokens (summed and divided by `num_items_in_batch` when given).
    loss_vtop (`torch.FloatTensor` of shape `()`, *optional*):
        `1 - cos(prediction, target)`, averaged over the batch.
    loss_traj (`torch.FloatTensor` of shape `()`, *optional*):
        `KL(target || predicted)` over each sample's image tokens, averaged over the batch.
    vtop_prediction (`torch.FloatTensor` of shape `(batch_size, teacher_hidden_size)`, *optional*):
        The V_top head's output.
    trajectory_log_probs (`torch.FloatTensor` of shape `(batch_size, max_image_tokens)`, *optional*):
        The predicted log-distribution over each sample's image tokens, in sequence order; `-inf` past a sample's
        own image-token count.
    """

    loss_ce: torch.FloatTensor | None = None
    loss_vtop: torch.FloatTensor | None = None
    loss_traj: torch.FloatTensor | None = None
    vtop_prediction: torch.FloatTensor | None = None
    trajectory_log_probs: torch.FloatTensor | None = None


@functools.cache
def _unbound_parameters(function) -> tuple[str, ...]:
    return tuple(inspect.signature(function).parameters)[1:]


def _parameter_names(method) -> tuple[str, ...]:
    """The parameter names of a bound method (`self` left out), read once per function: each forward asks."""
    return _unbound_parameters(method.__func__)


def batch_vision_inputs(
    host_vision_inputs: Callable[[PreTrainedConfig, torch.Tensor], dict], vision_config: PreTrainedConfig, grid_thw
) -> dict:
    """A family's precomputable tower inputs for the images of `grid_thw`, under the names a batch or a forward
    carries them by (prefixed `image_`, which transformers strips before the tower); the unset ones left out."""
    derived = host_vision_inputs(vision_config, grid_thw)
    return {f"image_{name}": value for name, value in derived.items() if value is not None}


class LaViTModelMixin:
    """The LaViT base model: the family's model, with the stage-1 and `mask_latent` rules imposed on its text model.

    Class attributes a binding may set:
        text_model_accepts_mask_mapping (`bool`, defaults to `True`): whether the family's text model takes a mapping
            of masks per layer type (Qwen2-VL, Qwen2.5-VL). Qwen3-VL's builds its own causal mask and takes no
            mapping: it gets the prepared 4-D mask instead.
        host_vision_inputs (`Callable[[PreTrainedConfig, torch.Tensor], dict]`, defaults to `None`): the inputs of
            the family's vision tower that transformers lets a caller precompute (`transformers.vision_utils`: rotary
            positions, attention segments, windows), derived from the tower's config and a host copy of
            `image_grid_thw`. With it, a training forward encodes the images ahead (`encode_images_ahead`); without it
            (Qwen3-VL) the family's order runs.
    """

    text_model_accepts_mask_mapping = True
    host_vision_inputs: Callable[[PreTrainedConfig, torch.Tensor], dict] | None = None

    def latent_ids(self, device: torch.device) -> torch.Tensor:
        """`config.latent_token_ids` as a tensor on `device`, read from the config at each use (a buffer would be
        left uninitialised by `from_pretrained`, which builds the model on the meta device)."""
        return torch.tensor(self.config.latent_token_ids or [], dtype=torch.long, device=device)

    def get_image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.LongTensor | None = None, **kwargs):
        # Differ from the family (speed only, same outputs): activation checkpointing's `enable_input_require_grads`
        # hooks every input embedding, the tower's patch embedding included, so the stock model records autograd
        # through a FROZEN tower, recomputes it and backpropagates through it for nothing (about 3x the tower's
        # forward). A frozen tower (the training default) fed pixels that need no gradient runs without autograd.
        needs_grad = pixel_values.requires_grad or any(p.requires_grad for p in self.visual.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and needs_grad):
            return super().get_image_features(pixel_values, image_grid_thw, **kwargs)

    def vision_inputs_function(self) -> Callable[[torch.Tensor], dict] | None:
        """A picklable function from a batch's `image_grid_thw` to the tower's inputs under the names a batch carries
        them by (`batch_vision_inputs` over `host_vision_inputs` and this model's tower config), for a data collator
        to derive them in its worker processes (`DataCollatorForLaViT.vision_inputs`); `None` where the training
        forward does not encode images ahead."""
        if self.host_vision_inputs is None:
            return None
        return functools.partial(batch_vision_inputs, self.host_vision_inputs, self.visual.config)

    def lavit_mask_function(self, token_ids: torch.LongTensor, mask_latent: bool = False) -> Callable | None:
        """The mask function that the current stage and switches call for, or `None` for plain causal attention.

        Args:
            token_ids (`torch.LongTensor` of shape `(batch_size, total_length)`):
                The token ids of the whole sequence so far (under a KV cache, the cached ones included).
            mask_latent (`bool`): whether no later position may attend to the latent tokens.
        """
        return lavit_mask_function(
            token_ids,
            self.config.image_token_id,
            self.latent_ids(token_ids.device),
            self.config.training_stage,
            self.config.block_prompt,
            mask_latent,
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        mask_latent: bool = False,
        full_input_ids: torch.LongTensor | None = None,
        **kwargs,
    ):
        r"""
        The family model's forward (every other argument is the family's own), with the LaViT attention rules.

        mask_latent (`bool`, *optional*, defaults to `False`):
            No later position may attend to the latent tokens (a diagnostic of docs/method.md section 4).
        full_input_ids (`torch.LongTensor` of shape `(batch_size, total_length)`, *optional*):
            Token ids of the whole sequence so far, cached tokens included; needed to place the stage-1 and
            `mask_latent` rules under a KV cache (generation passes it). Defaults to `input_ids`.
        """
        token_ids = full_input_ids if full_input_ids is not None else input_ids
        mask_function = None if token_ids is None else self.lavit_mask_function(token_ids, mask_latent)
        if mask_function is None and (self.config.training_stage == 1 or mask_latent):
            raise ValueError("Stage 1 and mask_latent locate image and latent tokens from input_ids: pass input_ids.")
        if mask_function is not None and is_prepared_mask(attention_mask):
            # Generation with a static (compileable) cache hands the model one; it could not carry the rule.
            raise ValueError(
                "Stage 1 and mask_latent build their own mask from the 2-D padding mask, but a prepared (4-D or "
                "per-layer) attention mask was given; pass the 2-D mask (generate with the default dynamic cache)."
            )
        if position_ids is None and self.encodes_images_ahead(input_ids, inputs_embeds, past_key_values, kwargs):
            position_ids, inputs_embeds, right_padded = self.encode_images_ahead(input_ids, attention_mask, kwargs)
            if mask_function is None and right_padded:
                # Differ from the family (speed only, the same values at every real token): under the plain causal
                # rule no real token of a right-padded batch sees a padding position, so the padding mask changes
                # nothing there. Given one, sdpa takes the mask instead of its causal flag (3.6x the attention
                # backward on an H100, docs/pitfalls.md); the positions above came from the 2-D mask.
                attention_mask = None
        if mask_function is not None:
            reference = inputs_embeds if inputs_embeds is not None else input_ids
            dtype = inputs_embeds.dtype if inputs_embeds is not None else self.get_input_embeddings().weight.dtype
            if position_ids is None:
                # Differ from the family: positions come from the 2-D padding mask before it is replaced by the rule's
                # mask (a 4-D mask reaching get_rope_index crashes; docs/pitfalls.md, Qwen2.5-VL in transformers
                # 5.x).
                position_inputs = {name: kwargs.get(name) for name in self._position_arguments()}
                position_ids = self.positions_3d(
                    reference, input_ids, attention_mask, past_key_values, position_inputs
                )
            attention_mask = text_attention_masks(
                self.language_model.config,
                reference.shape[0],
                reference.shape[1],
                dtype,
                reference.device,
                attention_mask,
                past_key_values,
                mask_function,
                as_mapping=self.text_model_accepts_mask_mapping,
            )
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )

    def encodes_images_ahead(self, input_ids, inputs_embeds, past_key_values, kwargs: dict) -> bool:
        """Whether this forward encodes its images ahead (`encode_images_ahead`): a training forward on token ids and
        images alone (no embeddings, video, cache or precomputed features) of a family with `host_vision_inputs`."""
        encoded = (kwargs.get("mm_encoder_outputs") or {}).get("image") is not None
        return (
            self.training
            and self.host_vision_inputs is not None
            and input_ids is not None
            and inputs_embeds is None
            and past_key_values is None
            and kwargs.get("pixel_values") is not None
            and kwargs.get("image_grid_thw") is not None
            and kwargs.get("pixel_values_videos") is None
            and not encoded
        )

    def encode_images_ahead(
        self, input_ids: torch.LongTensor, attention_mask, kwargs: dict
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Queue the vision tower and the input embeddings with the image features in place, then derive the 3-D
        positions on the host while the device runs them; returns `(position_ids, inputs_embeds, right_padded)` and
        takes `pixel_values` out of `kwargs`, so the family's forward skips all three. `right_padded`: no sample has a
        real token after a padding position (read on the host copy of the mask).

        Differ from the family (speed only, the same values): its forward encodes the images, reads their split sizes
        back from the device (a host sync that waits for the whole tower), checks the image-token count against the
        features with another, and only then derives the positions in a Python loop with a sync per sample, while the
        device idles. Here the tower's own inputs and the split sizes come from host copies of the grid (taken while
        the device has nothing queued), the count is checked on the host copy of the ids, and the positions are
        derived on host copies during the tower's run: the host queues the language model behind it. A batch that
        carries the tower's inputs (`image_position_ids`, `image_cu_seqlens`, ...: `DataCollatorForLaViT` derives them
        in its worker processes with `vision_inputs_function`) hands them over as they are, so the host queues the
        tower as soon as its copies return."""
        device = input_ids.device

        def on_host(value):
            return value.cpu() if isinstance(value, torch.Tensor) else value

        def to_device(value, behind_the_tower: bool = False):
            if not isinstance(value, torch.Tensor):
                return value
            # A copy from pageable memory may wait for the work queued before it; from pinned memory it does not. Only
            # a copy queued behind the tower needs that: pinning costs the host milliseconds while the device idles.
            pinned = behind_the_tower and device.type == "cuda"
            return (value.pin_memory() if pinned else value).to(device, non_blocking=True)

        # Every host copy before the tower is queued: a copy taken after it would wait for it.
        host_ids, host_mask, grid = input_ids.cpu(), on_host(attention_mask), kwargs["image_grid_thw"].cpu()
        host_position_inputs = {name: on_host(kwargs.get(name)) for name in self._position_arguments()}
        host_position_inputs["image_grid_thw"] = grid
        carried = [name for name in kwargs if name.startswith("image_") and name != "image_grid_thw"]
        precomputed = {name: kwargs.pop(name) for name in carried} or {
            name: to_device(value) for name, value in self.vision_inputs_function()(grid).items()
        }
        own = _parameter_names(super().forward)
        passed_on = {name: value for name, value in kwargs.items() if name not in own}  # as the family passes them
        features = self.get_image_features(
            kwargs.pop("pixel_values"), grid, return_dict=True, **precomputed, **passed_on
        )
        inputs_embeds = self.get_input_embeddings()(input_ids)
        image_embeds = torch.cat(features.pooler_output, dim=0).to(inputs_embeds.device, inputs_embeds.dtype)
        is_image = input_ids == self.config.image_token_id
        image_tokens = int((host_ids == self.config.image_token_id).sum())
        if image_tokens != image_embeds.shape[0]:
            raise ValueError(
                f"Image features and image tokens do not match, tokens: {image_tokens}, features: "
                f"{image_embeds.shape[0]}"
            )
        inputs_embeds = inputs_embeds.masked_scatter(is_image.unsqueeze(-1), image_embeds)
        position_ids = self.positions_3d(host_ids, host_ids, host_mask, None, host_position_inputs)
        right_padded = host_mask is None or (
            host_mask.dim() == 2 and bool((host_mask[:, 1:] <= host_mask[:, :-1]).all())
        )
        return to_device(position_ids, behind_the_tower=True), inputs_embeds, right_padded

    def positions_3d(self, reference, input_ids, attention_mask, past_key_values, position_inputs: dict):
        """The family's 3-D rotary positions from the ids and the 2-D padding mask. The family reads only the shape
        and device of `inputs_embeds`: an empty stand-in shaped as `reference` (the embeddings or the ids) is passed,
        so no embedding is computed twice."""
        return self.compute_3d_position_ids(
            input_ids=input_ids,
            inputs_embeds=reference.new_empty((*reference.shape[:2], 0)),
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            **position_inputs,
        )

    def _position_arguments(self) -> list[str]:
        """The multimodal inputs (grids, token types, video timing) the family's `compute_3d_position_ids` reads."""
        own = ("input_ids", "inputs_embeds", "attention_mask", "past_key_values")
        return [name for name in _parameter_names(self.compute_3d_position_ids) if name not in own]


class LaViTForConditionalGenerationMixin:
    """The LaViT student: the family's conditional-generation model with the two heads and the loss terms.

    Class attributes a binding sets:
        lavit_model_class (`type`): the binding's base model (`LaViTModelMixin` + the family's model).
    """

    lavit_model_class: type
    # The trainer divides the CE token sum by `num_items_in_batch` (exact token averaging under accumulation).
    accepts_loss_kwargs = True

    def __init__(self, config):
        # The family's own `__init__` would build its base model, which ours replaces: build ours once instead.
        PreTrainedModel.__init__(self, config)
        self.model = self.lavit_model_class(config)
        hidden_size = config.text_config.hidden_size
        self.lm_head = nn.Linear(hidden_size, config.text_config.vocab_size, bias=False)
        # docs/method.md section 2: Linear(d, d) -> GELU -> Linear(d, teacher_hidden); no head without a teacher width.
        self.vtop_head = build_vtop_head(hidden_size, config.teacher_hidden_size)
        self.trajectory_query = nn.Linear(hidden_size, hidden_size)
        self.post_init()

    @classmethod
    def from_base(
        cls,
        base: "str | os.PathLike | PreTrainedModel",
        processor: ProcessorMixin | None = None,
        num_latent_tokens: int = 4,
        teacher_hidden_size: int | None = None,
        seed: int = 0,
        **config_overrides,
    ) -> "tuple[PreTrainedModel, ProcessorMixin]":
        """Turn a checkpoint of this class's base family (a local folder or a loaded model) and its processor into a
        LaViT student. `lavit_hf.lavit_from_base` picks the class for any supported family.

        Every base weight is loaded (a `ValueError` lists any that is missing or unexpected); only the two heads start
        new. `<lvr1>` ... `<lvrK>` are added to the tokenizer as special tokens; the embedding matrix grows if it has
        no spare rows, and the latent rows (input and output) start at the mean of the existing rows plus small seeded
        noise, since the spare rows of real checkpoints are untrained. The processor is attached, so
        `save_pretrained` writes it next to the weights.

        Args:
            base (`str`, `os.PathLike` or `PreTrainedModel`):
                A saved checkpoint folder of the base family, or a loaded model of it.
            processor (`ProcessorMixin`, *optional*):
                Its processor; loaded from `base` when `base` is a folder and this is omitted.
            num_latent_tokens (`int`, *optional*, defaults to 4):
                K.
            teacher_hidden_size (`int`, *optional*):
                Width of the teacher features (from the data); without it the model has no V_top head.
            seed (`int`, *optional*, defaults to 0):
                Seeds the new heads and the noise of the latent embeddings.
            config_overrides:
                Further LaViT config fields.
        """
        from transformers import AutoProcessor

        torch.manual_seed(seed)
        from_folder = not isinstance(base, nn.Module)
        base_config = AutoConfig.from_pretrained(base) if from_folder else base.config
        expected = cls.config_class.base_model_type
        if base_config.model_type != expected:
            raise ValueError(
                f"{cls.__name__} converts {expected!r} checkpoints, got model_type {base_config.model_type!r}."
            )
        skipped = ("model_type", "architectures", "auto_map", "transformers_version")
        fields = {k: v for k, v in base_config.to_dict().items() if k not in skipped}
        config = cls.config_class(
            **fields, num_latent_tokens=num_latent_tokens, teacher_hidden_size=teacher_hidden_size, **config_overrides
        )
        if from_folder:
            processor = processor if processor is not None else AutoProcessor.from_pretrained(base)
            model, info = cls.from_pretrained(base, config=config, output_loading_info=True)
            missing, unexpected = info["missing_keys"], info["unexpected_keys"]
        else:
            if processor is None:
                raise ValueError(f"Pass the processor of the {expected} model.")
            model = cls(config).to(device=base.device, dtype=base.dtype)
            missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
        new_heads = ("vtop_head.", "trajectory_query.")
        missing = [key for key in missing if not key.startswith(new_heads)]
        if missing or unexpected:
            raise ValueError(
                f"Converting the {expected} checkpoint left weights unloaded: missing {sorted(missing)[:10]}, "
                f"unexpected {sorted(unexpected)[:10]}."
            )
        model.add_latent_tokens(processor, seed)
        model.processor = processor
        return model.eval(), processor

    def add_latent_tokens(self, processor: ProcessorMixin, seed: int = 0) -> list[int]:
        """Add the K latent tokens to `processor`'s tokenizer, initialise their embedding rows and record their ids."""
        tokenizer = processor.tokenizer
        known_rows = len(tokenizer)
        ids = add_latent_tokens(tokenizer, self.config.num_latent_tokens)
        if max(ids) >= self.get_input_embeddings().num_embeddings:
            self.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            embeddings = [self.get_input_embeddings().weight]
            if not self.config.tie_word_embeddings:
                embeddings.append(self.get_output_embeddings().weight)
            for weight in embeddings:
                existing = weight[: min(known_rows, min(ids))].float()
                noise = torch.randn(len(ids), weight.shape[1], generator=generator) * existing.std() * 0.01
                weight[ids] = (existing.mean(dim=0) + noise.to(weight.device)).to(weight.dtype)
        self.config.latent_token_ids = list(ids)
        return ids

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the attached processor (if any) next to the weights."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        processor = getattr(self, "processor", None)
        if processor is not None and kwargs.get("is_main_process", True):
            processor.save_pretrained(save_directory)
        return result

    def set_training_stage(self, stage: int) -> None:
        """Switch the attention rule and the loss terms to stage `stage` (0 single, 1 bottleneck, 2 joint)."""
        if stage not in (0, 1, 2):
            raise ValueError(f"Unknown training stage {stage!r}: expected 0 (single), 1 (bottleneck) or 2 (joint).")
        self.config.training_stage = stage

    def token_layout(
        self,
        input_ids: torch.LongTensor,
        image_grid_thw: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        trajectory_mask: torch.Tensor | None = None,
        need_latents: bool = False,
        sample_problems: dict[str, torch.Tensor] | None = None,
    ) -> TokenLayout:
        """`locate_tokens` with this model's image token, merge size and (with `need_latents`) latent tokens: the
        image and latent positions of a batch, every sample checked with one host sync."""
        return locate_tokens(
            input_ids,
            self.config.image_token_id,
            self.config.vision_config.spatial_merge_size,
            image_grid_thw=image_grid_thw,
            latent_ids=(self.config.latent_token_ids or []) if need_latents else None,
            labels=labels,
            trajectory_mask=trajectory_mask,
            sample_problems=sample_problems,
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        vtop_target: torch.Tensor | None = None,
        vtop_target_mask: torch.Tensor | None = None,
        trajectory_target: torch.Tensor | None = None,
        trajectory_mask: torch.Tensor | None = None,
        mask_latent: bool = False,
        full_input_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | LaViTCausalLMOutputWithPast:
        r"""
        The family's inputs, plus the teacher targets and the mask switch. Inputs a family does not have (Qwen2.5-VL's
        `second_per_grid_ts` elsewhere) are passed on only when given.

        second_per_grid_ts (`torch.Tensor` of shape `(num_videos,)`, *optional*):
            Qwen2.5-VL only: the seconds per temporal grid of each video.
        vtop_target (`torch.Tensor` of shape `(batch_size, D)` or `(batch_size, n, D)`, *optional*):
            The teacher's top-layer image features (`D = teacher_hidden_size`), pooled or token-wise (then mean-pooled
            here over `vtop_target_mask`). Must be finite (over the valid rows).
        vtop_target_mask (`torch.BoolTensor` of shape `(batch_size, n)`, *optional*):
            Valid rows of a padded token-wise `vtop_target`; all rows when omitted.
        trajectory_target (`torch.Tensor` of shape `(batch_size, max_image_tokens)`, *optional*):
            The teacher's distribution over each sample's image tokens (already on the student's grid), padded: finite,
            non-negative and summing to 1 over `trajectory_mask`.
        trajectory_mask (`torch.BoolTensor` of shape `(batch_size, max_image_tokens)`, *optional*):
            Valid entries of `trajectory_target`; sample `b` must have exactly as many as it has image tokens.
        mask_latent (`bool`, *optional*, defaults to `False`):
            No later position may attend to the latent tokens (diagnostic).
        full_input_ids (`torch.LongTensor`, *optional*):
            Token ids of the whole sequence so far under a KV cache (set by `generate`).

        Example:

        ```python
        >>> from lavit_hf import build_tiny_lavit
        >>> model, processor = build_tiny_lavit(seed=0)
        >>> messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
        >>> text = processor.apply_chat_template(messages, add_generation_prompt=True)
        >>> from PIL import Image
        >>> inputs = processor(text=[text], images=[Image.new("RGB", (56, 56), "red")], return_tensors="pt")
        >>> out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        >>> out.shape[1] == inputs["input_ids"].shape[1] + 3
        True

        ```
        """
        wants_distillation = vtop_target is not None or trajectory_target is not None
        # Every check runs before the forward (a per-sample mismatch otherwise surfaces as a shape error in
        # get_rope_index), with one host sync for every check and count of the batch.
        problems = {}
        if vtop_target is not None:
            check_vtop_target(vtop_target, self.config.teacher_hidden_size)
            problems.update(vtop_target_problems(vtop_target, vtop_target_mask))
        if trajectory_target is not None and input_ids is not None:
            trajectory_mask = check_trajectory_target(trajectory_target, trajectory_mask, input_ids.shape[0])
            problems.update(trajectory_target_problems(trajectory_target, trajectory_mask))
        train_labels = labels if labels is not None and self.training else None
        layout = (
            self.token_layout(
                input_ids,
                image_grid_thw,
                labels=train_labels,
                trajectory_mask=trajectory_mask if trajectory_target is not None else None,
                need_latents=wants_distillation,
                sample_problems=problems,
            )
            if input_ids is not None and (pixel_values is not None or wants_distillation or train_labels is not None)
            else None
        )
        family_inputs = {"second_per_grid_ts": second_per_grid_ts} if second_per_grid_ts is not None else {}
        recorder = (
            self.latent_attention_recorder(layout.latent_positions)
            if wants_distillation and layout is not None and self.config.trajectory_prediction == "latent_attention"
            else None
        )
        if wants_distillation and self.config.head_layer is not None:
            kwargs["output_hidden_states"] = True
        with observing_attention(self, recorder) if recorder is not None else contextlib.nullcontext():
            outputs = self.model(
                input_ids=input_ids,
                pixel_values=pixel_values,
                pixel_values_videos=pixel_values_videos,
                image_grid_thw=image_grid_thw,
                video_grid_thw=video_grid_thw,
                mm_token_type_ids=mm_token_type_ids,
                position_ids=position_ids,
                attention_mask=attention_mask,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                use_cache=use_cache,
                mm_encoder_outputs=mm_encoder_outputs,
                mask_latent=mask_latent,
                full_input_ids=full_input_ids,
                **family_inputs,
                **kwargs,
            )
        hidden_states = outputs.last_hidden_state

        loss_ce = logits = None
        if labels is not None and self.training:
            # Differ from the family: in training, project only the labelled positions onto the vocabulary; the full
            # (sequence x vocabulary) logits are never materialised.
            loss_ce = labelled_causal_lm_loss(
                self.lm_head,
                hidden_states,
                labels,
                kwargs.get("num_items_in_batch"),
                num_labelled=layout.num_labelled if layout is not None else None,
            )
        else:
            logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))
            if labels is not None:
                loss_ce = self.loss_function(
                    logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
                )

        loss_vtop = loss_traj = vtop_prediction = trajectory_log_probs = None
        if wants_distillation:
            if layout is None or pixel_values is None:
                raise ValueError(
                    "Teacher targets need pixel_values and input_ids holding the image and latent tokens."
                )
            head_states = hidden_states
            if self.config.head_layer is not None:  # through the final norm, on the final states' scale
                head_states = self.model.language_model.norm(outputs.hidden_states[self.config.head_layer])
            latent_state = latent_head_input(layout.latent_positions, head_states, self.config.head_input)
            if vtop_target is not None:
                vtop_prediction = self.predict_vtop(latent_state)
                loss_vtop = vtop_cosine_loss(vtop_prediction, pool_vtop_target(vtop_target, vtop_target_mask))
            if recorder is not None:
                trajectory_log_probs = latent_attention_trajectory(recorder.mean(), layout)
            else:
                trajectory_log_probs = predict_trajectory(self.trajectory_query, latent_state, head_states, layout)
            if trajectory_target is not None and self.config.use_trajectory_loss:
                target = align_trajectory_target(trajectory_target, trajectory_mask, layout.image_valid)
                loss_traj = trajectory_kl_loss(trajectory_log_probs, target, layout.image_valid)

        loss = combine_losses(
            {"loss_ce": loss_ce, "loss_vtop": loss_vtop, "loss_traj": loss_traj},
            loss_weights(self.config),
            ce_enters_loss(self.config),
        )
        return LaViTCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            loss_ce=loss_ce,
            loss_vtop=loss_vtop,
            loss_traj=loss_traj,
            vtop_prediction=vtop_prediction,
            trajectory_log_probs=trajectory_log_probs,
        )

    def latent_attention_recorder(self, latent_positions: torch.LongTensor) -> LatentAttentionRecorder:
        """A recorder of the latent tokens' attention on `config.trajectory_attention_layers` (all layers if unset)."""
        if self.training and self.is_activation_checkpointing:
            raise ValueError(
                "trajectory_prediction='latent_attention' reads the attention during the forward, which activation "
                "checkpointing recomputes without it: train without activation checkpointing."
            )
        layers = self.model.language_model.layers
        indices = self.config.trajectory_attention_layers
        indices = range(len(layers)) if indices is None else [i % len(layers) for i in indices]
        return LatentAttentionRecorder({layers[i].self_attn: i for i in indices}, latent_positions)

    def predict_vtop(self, latent_state: torch.Tensor) -> torch.Tensor:
        """The V_top head's output for the latent state `(batch_size, d)`."""
        if self.vtop_head is None:
            raise ValueError(
                "A vtop_target was given but the model has no V_top head: set config.teacher_hidden_size."
            )
        return self.vtop_head(latent_state)

    def prepare_inputs_for_generation(self, input_ids, *args, mask_latent: bool = False, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(input_ids, *args, mask_latent=mask_latent, **kwargs)
        if mask_latent or self.config.training_stage == 1:
            # The mask rules look at the whole sequence (cached tokens included), not only the uncached slice.
            model_inputs["full_input_ids"] = input_ids
        return model_inputs


__all__ = [
    "LaViTCausalLMOutputWithPast",
    "LaViTForConditionalGenerationMixin",
    "LaViTModelMixin",
    "add_latent_tokens",
    "register_base_conversions",
]
