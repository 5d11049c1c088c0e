"""LaViT (arXiv 2601.10129) on top of Qwen2.5-VL, written in the style of a transformers modular file.

What differs from Qwen2.5-VL, and nothing else:
- `LaViTModel` builds the attention mask from a mask *function* when a rule beyond causal + padding applies: the
  stage-1 bottleneck (METHOD.md section 3) and the `mask_latent` diagnostic (section 4).
- `LaViTForConditionalGeneration` adds the V_top head and the trajectory head (section 2), reads the final hidden
  state of the latent tokens and of the image tokens, and returns each loss term.

Changes from the reference code (METHOD.md section 6): the bottleneck is a boolean rule combined with causality and
padding by `create_causal_mask` (the reference's 0/1 float mask blocked nothing); the trajectory is read at the image
tokens located by `image_token_id` and checked against `image_grid_thw` (the reference read the system prompt and got
a loss of 0 behind a bare `except`); bad inputs raise `ValueError` naming the sample.

This file is copied next to saved checkpoints (remote code): it imports only torch, transformers and its sibling.
"""

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
)
from transformers.processing_utils import ProcessorMixin, Unpack
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.utils import TransformersKwargs, logging

from .attention import PACKED_VISION_ATTENTION  # noqa: F401  (importing registers it: a trained config may name it)
from .configuration_lavit import LaViTConfig
from .layout import latent_token_strings
from .losses import (
    ce_enters_loss,
    combine_losses,
    labelled_causal_lm_loss,
    loss_weights,
    trajectory_kl_loss,
    vtop_cosine_loss,
)


logger = logging.get_logger(__name__)

# A new class name matches none of the rules that convert Qwen2.5-VL's legacy key layout (`model.layers.*`,
# `visual.*`), so `from_pretrained(<a Qwen2.5-VL checkpoint>)` would silently leave the language model random
# (HF_NOTES.md, "Tokens, checkpoints, remote code"). Reuse Qwen's rules for our classes.
for _ours, _qwen in (("LaViTModel", "Qwen2VLModel"), ("LaViTForConditionalGeneration", "Qwen2VLForConditionalGeneration")):
    register_checkpoint_conversion_mapping(_ours, get_checkpoint_conversion_mapping(_qwen), overwrite=True)


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


@dataclass
class TokenLayout:
    """Where a batch's image and latent tokens are (`LaViTForConditionalGeneration.token_layout`).

    Attributes:
        image_positions (`torch.LongTensor` of shape `(batch_size, max_image_tokens)`): each sample's image-token
            positions in sequence order, padded.
        image_valid (`torch.BoolTensor` of shape `(batch_size, max_image_tokens)`): which entries are real.
        image_counts (`list[int]`): image tokens per sample.
        latent_positions (`torch.LongTensor` of shape `(batch_size, K)`, *optional*): positions of `<lvr1>` ...
            `<lvrK>` (when asked for).
        num_labelled (`int`, *optional*): labelled next-token targets in the batch (when labels were given).
    """

    image_positions: torch.Tensor
    image_valid: torch.Tensor
    image_counts: list[int]
    latent_positions: torch.Tensor | None = None
    num_labelled: int | None = None


def bottleneck_mask_function(
    is_image: torch.Tensor, is_latent: torch.Tensor, first_latent: torch.Tensor, block_prompt: bool
) -> Callable:
    """The stage-1 rule as a mask function for `create_causal_mask(..., and_mask_function=)`.

    A query `q` may attend to a key `kv` of sample `b` when

        NOT image[b, kv] OR image[b, q] OR latent[b, q] OR (NOT block_prompt AND q < first_latent[b])

    so the answer (everything after the latent tokens) never sees the image, the text between the image and the
    latent tokens sees it only without `block_prompt`, and the latent tokens always do. Causality and padding are
    ANDed in by `create_causal_mask`. Pure index arithmetic on absolute positions, so it holds under a KV cache.
    """

    def inner_mask(batch_idx, head_idx, q_idx, kv_idx):
        allowed = ~is_image[batch_idx, kv_idx] | is_image[batch_idx, q_idx] | is_latent[batch_idx, q_idx]
        if not block_prompt:
            allowed = allowed | (q_idx < first_latent[batch_idx])
        return allowed

    return inner_mask


def latent_key_mask_function(is_latent: torch.Tensor) -> Callable:
    """The `mask_latent` diagnostic: `NOT latent[b, kv] OR q == kv`, no later position attends to a latent token."""

    def inner_mask(batch_idx, head_idx, q_idx, kv_idx):
        return ~is_latent[batch_idx, kv_idx] | (q_idx == kv_idx)

    return inner_mask


class LaViTModel(Qwen2_5_VLModel):
    config: LaViTConfig

    def latent_ids(self, device: torch.device) -> torch.Tensor:
        """`config.latent_token_ids` as a tensor on `device`, read from the config at each use (a buffer would be
        left uninitialised by `from_pretrained`, which builds the model on the meta device)."""
        return torch.tensor(self.config.latent_token_ids or [], dtype=torch.long, device=device)

    def get_image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.LongTensor | None = None, **kwargs):
        # Differ from Qwen (speed only, same outputs): activation checkpointing's `enable_input_require_grads` hooks
        # every input embedding, the tower's patch embedding included, so stock Qwen2.5-VL records autograd through
        # a FROZEN tower, recomputes it and backpropagates through it for nothing (about 3x the tower's forward; the
        # largest cost of a 3B step after the per-window attention loop). A frozen tower (the training default) fed
        # pixels that need no gradient runs without autograd instead.
        needs_grad = pixel_values.requires_grad or any(p.requires_grad for p in self.visual.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and needs_grad):
            return super().get_image_features(pixel_values, image_grid_thw, **kwargs)

    def lavit_mask_function(self, token_ids: torch.LongTensor, mask_latent: bool = False) -> Callable | None:
        """The mask function that the current stage and switches call for, or `None` for plain causal attention.

        Args:
            token_ids (`torch.LongTensor` of shape `(batch_size, total_length)`):
                The token ids of the whole sequence so far (under a KV cache, the cached ones included).
            mask_latent (`bool`): whether no later position may attend to the latent tokens.
        """
        functions = []
        is_latent = torch.isin(token_ids, self.latent_ids(token_ids.device))
        if self.config.training_stage == 1:
            is_image = token_ids == self.config.image_token_id
            positions = torch.arange(token_ids.shape[1], device=token_ids.device)
            first_latent = torch.where(is_latent, positions, token_ids.shape[1]).amin(dim=1)
            functions.append(bottleneck_mask_function(is_image, is_latent, first_latent, self.config.block_prompt))
        if mask_latent:
            functions.append(latent_key_mask_function(is_latent))
        if not functions:
            return None
        if len(functions) == 1:
            return functions[0]
        first, second = functions
        return lambda b, h, q, kv: first(b, h, q, kv) & second(b, h, q, kv)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        mask_latent: bool = False,
        full_input_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        r"""
        mask_latent (`bool`, *optional*, defaults to `False`):
            No later position may attend to the latent tokens (a diagnostic of METHOD.md section 4).
        full_input_ids (`torch.LongTensor` of shape `(batch_size, total_length)`, *optional*):
            Token ids of the whole sequence so far, cached tokens included; needed to place the stage-1 and
            `mask_latent` rules under a KV cache (generation passes it). Defaults to `input_ids`.
        """
        token_ids = full_input_ids if full_input_ids is not None else input_ids
        mask_function = None if token_ids is None else self.lavit_mask_function(token_ids, mask_latent)
        if mask_function is None and (self.config.training_stage == 1 or mask_latent):
            raise ValueError("Stage 1 and mask_latent locate image and latent tokens from input_ids: pass input_ids.")
        if mask_function is not None and not isinstance(attention_mask, dict):
            # Differ from Qwen: positions come from the 2-D padding mask before it is replaced by the rule's mask
            # (a 4-D mask reaching get_rope_index crashes, HF_NOTES.md).
            if inputs_embeds is None:
                inputs_embeds = self.get_input_embeddings()(input_ids)
            if position_ids is None:
                position_ids = self.compute_3d_position_ids(
                    input_ids=input_ids,
                    image_grid_thw=image_grid_thw,
                    video_grid_thw=video_grid_thw,
                    second_per_grid_ts=second_per_grid_ts,
                    inputs_embeds=inputs_embeds,
                    attention_mask=attention_mask,
                    past_key_values=past_key_values,
                    mm_token_type_ids=mm_token_type_ids,
                )
            mask_kwargs = {
                "config": self.language_model.config,
                "inputs_embeds": inputs_embeds,
                "attention_mask": attention_mask,
                "past_key_values": past_key_values,
                "and_mask_function": mask_function,
            }
            attention_mask = {"full_attention": create_causal_mask(**mask_kwargs)}
            if self.language_model.has_sliding_layers:
                attention_mask["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            second_per_grid_ts=second_per_grid_ts,
            mm_encoder_outputs=mm_encoder_outputs,
            **kwargs,
        )


class LaViTForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    config: LaViTConfig
    # The trainer divides the CE token sum by `num_items_in_batch` (exact token averaging under accumulation).
    accepts_loss_kwargs = True

    def __init__(self, config: LaViTConfig):
        super().__init__(config)
        self.model = LaViTModel(config)
        hidden_size = config.text_config.hidden_size
        # METHOD.md section 2: Linear(d, d) -> GELU -> Linear(d, teacher_hidden); no head without a teacher width.
        self.vtop_head = (
            nn.Sequential(
                nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, config.teacher_hidden_size)
            )
            if config.teacher_hidden_size is not None
            else None
        )
        self.trajectory_query = nn.Linear(hidden_size, hidden_size)
        self.post_init()

    @classmethod
    def from_qwen2_5_vl(
        cls,
        base: "str | os.PathLike | Qwen2_5_VLForConditionalGeneration",
        processor: ProcessorMixin | None = None,
        num_latent_tokens: int = 4,
        teacher_hidden_size: int | None = None,
        seed: int = 0,
        **config_overrides,
    ) -> "tuple[LaViTForConditionalGeneration, ProcessorMixin]":
        """Turn a Qwen2.5-VL checkpoint (a local folder or a loaded model) and its processor into a LaViT student.

        Every Qwen2.5-VL weight is loaded (a `ValueError` lists any that is missing or unexpected); only the two heads
        start new. `<lvr1>` ... `<lvrK>` are added to the tokenizer as special tokens; the embedding matrix grows if
        it has no spare rows, and the latent rows (input and output) start at the mean of the existing rows plus
        small seeded noise, since the spare rows of real checkpoints are untrained. The processor is attached, so
        `save_pretrained` writes it next to the weights.

        Args:
            base (`str`, `os.PathLike` or `Qwen2_5_VLForConditionalGeneration`):
                A saved Qwen2.5-VL checkpoint folder or a loaded model.
            processor (`ProcessorMixin`, *optional*):
                Its processor; loaded from `base` when `base` is a folder and this is omitted.
            num_latent_tokens (`int`, *optional*, defaults to 4):
                K.
            teacher_hidden_size (`int`, *optional*):
                Width of the teacher features (from the data); without it the model has no V_top head.
            seed (`int`, *optional*, defaults to 0):
                Seeds the new heads and the noise of the latent embeddings.
            config_overrides:
                Further `LaViTConfig` fields.
        """
        from transformers import AutoProcessor, Qwen2_5_VLConfig

        torch.manual_seed(seed)
        from_folder = not isinstance(base, nn.Module)
        qwen_config = Qwen2_5_VLConfig.from_pretrained(base) if from_folder else base.config
        fields = {k: v for k, v in qwen_config.to_dict().items() if k not in ("model_type", "architectures", "auto_map")}
        config = LaViTConfig(
            **fields, num_latent_tokens=num_latent_tokens, teacher_hidden_size=teacher_hidden_size, **config_overrides
        )
        if from_folder:
            processor = processor if processor is not None else AutoProcessor.from_pretrained(base)
            model, info = cls.from_pretrained(base, config=config, output_loading_info=True)
            missing, unexpected = info["missing_keys"], info["unexpected_keys"]
        else:
            if processor is None:
                raise ValueError("Pass the processor of the Qwen2.5-VL model.")
            model = cls(config).to(base.dtype)
            missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
        new_heads = ("vtop_head.", "trajectory_query.")
        missing = [key for key in missing if not key.startswith(new_heads)]
        if missing or unexpected:
            raise ValueError(
                f"Converting the Qwen2.5-VL checkpoint left weights unloaded: missing {sorted(missing)[:10]}, "
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
        vtop_target (`torch.Tensor` of shape `(batch_size, teacher_hidden_size)` or `(batch_size, n, teacher_hidden_size)`, *optional*):
            The teacher's top-layer image features, pooled or token-wise (then mean-pooled here over
            `vtop_target_mask`).
        vtop_target_mask (`torch.BoolTensor` of shape `(batch_size, n)`, *optional*):
            Valid rows of a padded token-wise `vtop_target`; all rows when omitted.
        trajectory_target (`torch.Tensor` of shape `(batch_size, max_image_tokens)`, *optional*):
            The teacher's distribution over each sample's image tokens (already on the student's grid), padded.
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
        if trajectory_target is not None and input_ids is not None:
            trajectory_mask = self.check_trajectory_target(trajectory_target, trajectory_mask, input_ids.shape[0])
        # Checked before the forward (a per-sample mismatch otherwise surfaces as a shape error in get_rope_index),
        # with one host sync for every check and count of the batch.
        train_labels = labels if labels is not None and self.training else None
        layout = (
            self.token_layout(
                input_ids,
                image_grid_thw,
                labels=train_labels,
                trajectory_mask=trajectory_mask if trajectory_target is not None else None,
                need_latents=wants_distillation,
            )
            if input_ids is not None and (pixel_values is not None or wants_distillation or train_labels is not None)
            else None
        )
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            second_per_grid_ts=second_per_grid_ts,
            mm_token_type_ids=mm_token_type_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            mm_encoder_outputs=mm_encoder_outputs,
            mask_latent=mask_latent,
            full_input_ids=full_input_ids,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state

        loss_ce = logits = None
        if labels is not None and self.training:
            # Differ from Qwen: in training, project only the labelled positions onto the vocabulary; the full
            # (sequence x 152k) logits are never materialised.
            loss_ce = labelled_causal_lm_loss(
                self.lm_head,
                hidden_states,
                labels,
                kwargs.get("num_items_in_batch"),
                num_labelled=layout.num_labelled if layout is not None else None,
            )
        else:
            logits = self.lm_head(hidden_states[:, self._keep_slice(logits_to_keep), :])
            if labels is not None:
                loss_ce = self.loss_function(
                    logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
                )

        loss_vtop = loss_traj = vtop_prediction = trajectory_log_probs = None
        if wants_distillation:
            if layout is None or pixel_values is None:
                raise ValueError("Teacher targets need pixel_values and input_ids holding the image and latent tokens.")
            latent_state = self.latent_head_input(layout.latent_positions, hidden_states)
            if vtop_target is not None:
                vtop_prediction = self.predict_vtop(latent_state)
                loss_vtop = vtop_cosine_loss(vtop_prediction, self.pool_vtop_target(vtop_target, vtop_target_mask))
            trajectory_log_probs = self.predict_trajectory(latent_state, hidden_states, layout)
            if trajectory_target is not None and self.config.use_trajectory_loss:
                target = self.align_trajectory_target(trajectory_target, trajectory_mask, layout.image_valid)
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

    @staticmethod
    def _keep_slice(logits_to_keep: int | torch.Tensor) -> slice | torch.Tensor:
        return slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep

    def latent_head_input(self, latent_positions: torch.LongTensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """The latent state `(batch_size, d)` that feeds both heads: the last latent token's final hidden state, or
        the mean over the K latent tokens with `head_input="mean_latent"`."""
        states = hidden_states.gather(1, latent_positions.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1]))
        if self.config.head_input == "mean_latent":
            return states.mean(dim=1)
        return states[:, -1]

    def predict_vtop(self, latent_state: torch.Tensor) -> torch.Tensor:
        if self.vtop_head is None:
            raise ValueError("A vtop_target was given but the model has no V_top head: set config.teacher_hidden_size.")
        return self.vtop_head(latent_state)

    def pool_vtop_target(self, vtop_target: torch.Tensor, vtop_target_mask: torch.Tensor | None) -> torch.Tensor:
        """Check a V_top target's shape and mean-pool a token-wise one to `(batch_size, teacher_hidden_size)`."""
        expected = self.config.teacher_hidden_size
        if vtop_target.ndim not in (2, 3) or vtop_target.shape[-1] != expected:
            raise ValueError(
                f"vtop_target has shape {tuple(vtop_target.shape)}: expected (batch, {expected}) or "
                f"(batch, n, {expected})."
            )
        if vtop_target.ndim == 2:
            return vtop_target
        if vtop_target_mask is None:
            return vtop_target.float().mean(dim=1)
        weights = vtop_target_mask.to(torch.float32).unsqueeze(-1)
        counts = weights.sum(dim=1)
        empty = (counts.squeeze(-1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"Sample {empty[0]}: vtop_target_mask selects no row of the token-wise vtop_target.")
        return (vtop_target.float() * weights).sum(dim=1) / counts

    def token_layout(
        self,
        input_ids: torch.LongTensor,
        image_grid_thw: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        trajectory_mask: torch.Tensor | None = None,
        need_latents: bool = False,
    ) -> TokenLayout:
        """Locate the image tokens (and the latent tokens with `need_latents`) and check every sample, with ONE host
        sync for the whole batch: all the counts the checks need travel to the host together.

        Checks, each a `ValueError` naming the sample: its image-token count equals the tokens its images have by
        `image_grid_thw` (`t*h*w / merge**2` each, images taken in order); with `need_latents`, it holds each latent
        token exactly once; with `trajectory_mask`, the target has one entry per image token.
        """
        is_image = input_ids == self.config.image_token_id
        counts = is_image.sum(dim=1)
        merge = self.config.vision_config.spatial_merge_size
        pieces = {"image_counts": counts}
        if image_grid_thw is not None:
            pieces["per_image"] = image_grid_thw.prod(dim=-1) // merge**2
        if need_latents:
            if not self.config.latent_token_ids:
                raise ValueError("config.latent_token_ids is unset: add the latent tokens first (from_qwen2_5_vl).")
            hits = input_ids.unsqueeze(-1) == self.model.latent_ids(input_ids.device)  # (batch, seq, K)
            pieces["latent_counts"] = hits.sum(dim=1).flatten()
        if trajectory_mask is not None:
            pieces["target_counts"] = trajectory_mask.sum(dim=-1).flatten()
        if labels is not None:
            pieces["num_labelled"] = (labels[:, 1:] != -100).sum().reshape(1)
        flat = torch.cat([piece.to(device=input_ids.device, dtype=torch.long) for piece in pieces.values()]).tolist()
        host, offset = {}, 0
        for name, piece in pieces.items():
            host[name], offset = flat[offset : offset + piece.numel()], offset + piece.numel()

        image_counts, per_image = host["image_counts"], host.get("per_image", [])
        image_index = 0
        for sample, count in enumerate(image_counts):
            expected = 0
            while expected < count and image_index < len(per_image):
                expected += per_image[image_index]
                image_index += 1
            if expected != count:
                raise ValueError(
                    f"Sample {sample}: {count} image tokens in input_ids but image_grid_thw gives {expected} for its "
                    f"images (t*h*w/{merge**2} each); the trajectory needs one image token per merged patch."
                )
        if image_index != len(per_image):
            raise ValueError(f"image_grid_thw has {len(per_image)} images but input_ids hold {image_index}.")
        latent_positions = None
        if need_latents:
            k = self.config.num_latent_tokens
            for sample in range(input_ids.shape[0]):
                found = host["latent_counts"][sample * k : (sample + 1) * k]
                if any(count != 1 for count in found):
                    raise ValueError(
                        f"Sample {sample}: expected each latent token {self.config.latent_token_ids} exactly once in "
                        f"input_ids when teacher targets are given, found counts {found}."
                    )
            latent_positions = hits.to(torch.int8).argmax(dim=1)
        if trajectory_mask is not None:
            for sample, (have, want) in enumerate(zip(host["target_counts"], image_counts)):
                if have != want:
                    raise ValueError(
                        f"Sample {sample}: trajectory_target has {have} entries but the sample has {want} image "
                        "tokens; resample the teacher trajectory to the student's grid first."
                    )
        max_n = max(image_counts, default=0)
        # Positions of image tokens in order: sort keys put image positions first, stable in sequence order.
        order = torch.sort((~is_image).to(torch.int8), dim=1, stable=True).indices[:, :max_n]
        valid = torch.arange(max_n, device=input_ids.device) < counts.unsqueeze(1)
        num_labelled = host["num_labelled"][0] if labels is not None else None
        return TokenLayout(order, valid, image_counts, latent_positions, num_labelled)

    def predict_trajectory(
        self, latent_state: torch.Tensor, hidden_states: torch.Tensor, layout: TokenLayout
    ) -> torch.Tensor:
        """The predicted log-distribution over each sample's image tokens (METHOD.md section 2, trajectory head):
        a query projection of the latent state dotted with the final hidden states at the image tokens, scaled by
        `1/sqrt(d)` as an attention score is (so that a fresh head starts near uniform), then `log_softmax`."""
        empty = [sample for sample, count in enumerate(layout.image_counts) if count == 0]
        if empty:
            raise ValueError(f"Sample {empty[0]}: no image tokens, so it has no trajectory to predict.")
        positions, valid = layout.image_positions, layout.image_valid
        image_states = hidden_states.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1]))
        query = self.trajectory_query(latent_state)
        scores = torch.einsum("bd,bnd->bn", query.float(), image_states.float()) / math.sqrt(query.shape[-1])
        return torch.log_softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)

    @staticmethod
    def check_trajectory_target(
        trajectory_target: torch.Tensor, trajectory_mask: torch.Tensor | None, batch_size: int
    ) -> torch.Tensor:
        """Check the target's shapes and return its mask (all entries when none was given)."""
        if trajectory_target.ndim != 2 or trajectory_target.shape[0] != batch_size:
            raise ValueError(
                f"trajectory_target has shape {tuple(trajectory_target.shape)}: expected (batch={batch_size}, "
                "max_image_tokens)."
            )
        if trajectory_mask is None:
            return torch.ones_like(trajectory_target, dtype=torch.bool)
        if trajectory_mask.shape != trajectory_target.shape:
            raise ValueError(
                f"trajectory_mask has shape {tuple(trajectory_mask.shape)}, trajectory_target "
                f"{tuple(trajectory_target.shape)}: they must match."
            )
        return trajectory_mask.bool()

    @staticmethod
    def align_trajectory_target(
        trajectory_target: torch.Tensor, trajectory_mask: torch.Tensor, image_valid: torch.Tensor
    ) -> torch.Tensor:
        """Each sample's target entries (those of `trajectory_mask`, in order) placed at its image tokens: a
        `(batch_size, max_image_tokens)` tensor laid out as `image_valid`. The counts per sample must match
        (`token_layout` checks them); no host sync."""
        width = image_valid.shape[1]
        if trajectory_target.shape[1] < width:  # a target narrower than the image tokens: pad it with masked zeros
            pad = width - trajectory_target.shape[1]
            trajectory_target = F.pad(trajectory_target, (0, pad))
            trajectory_mask = F.pad(trajectory_mask, (0, pad))
        # Each sample's entries first, in order (a stable sort), then as many as the widest sample has image tokens.
        order = torch.sort((~trajectory_mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
        return trajectory_target.float().gather(1, order) * image_valid

    def prepare_inputs_for_generation(self, input_ids, *args, mask_latent: bool = False, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(input_ids, *args, mask_latent=mask_latent, **kwargs)
        if mask_latent or self.config.training_stage == 1:
            # The mask rules look at the whole sequence (cached tokens included), not only the uncached slice.
            model_inputs["full_input_ids"] = input_ids
        return model_inputs


__all__ = [
    "LaViTCausalLMOutputWithPast",
    "LaViTForConditionalGeneration",
    "LaViTModel",
    "TokenLayout",
    "add_latent_tokens",
]
