"""The LaViT fields every student configuration adds to its base family's configuration.

Each family's configuration (`configuration_lavit.py` for Qwen2.5-VL, `configuration_lavit_qwen2_vl.py`,
`configuration_lavit_qwen3_vl.py`) is `LaViTConfigMixin` plus the family's own config class, with a `model_type` of
its own and `base_model_type` naming the family it converts from.

This file is copied next to saved checkpoints (remote code): it imports nothing beyond the standard library.
"""

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True, repr=False)
class LaViTConfigMixin:
    r"""
    The fields of a LaViT student (arXiv 2601.10129): a vision-language model whose answer starts with K latent tokens
    `<lvr1>` ... `<lvrK>`, trained to carry a teacher's top-layer image features (V_top) and attention trajectory.
    The defaults reproduce the paper.

    num_latent_tokens (`int`, *optional*, defaults to 4):
        K, the number of latent tokens that start every assistant turn.
    latent_separator (`str`, *optional*, defaults to `" "`):
        What follows the latent tokens before the answer. The paper's space merges into the answer's first word
        token (`" red"`), so that token is predicted at the last latent position, which sees the image under every
        rule: for a one-token answer neither the stage-1 bottleneck nor the `mask_latent` diagnostic reaches it.
        `"\n"` is a token of its own, so every answer token is predicted after the latent tokens.
    latent_token_ids (`list[int]`, *optional*):
        Token ids of `<lvr1>` ... `<lvrK>`, in order. Set when the tokens are added to the tokenizer
        (`lavit_hf.lavit_from_base`).
    teacher_hidden_size (`int`, *optional*):
        Width of the teacher's hidden states, the V_top head's output size. It comes from the data (5,120 for the
        paper's Qwen2.5-VL-32B teacher); without it the model has no V_top head.
    ce_loss_weight (`float`, *optional*, defaults to 1.0):
        Weight of the next-token cross-entropy.
    vtop_loss_weight (`float`, *optional*, defaults to 0.3):
        Weight of `1 - cos(V_top prediction, teacher V_top)`.
    trajectory_loss_weight (`float`, *optional*, defaults to 0.3):
        Weight of `KL(teacher trajectory || predicted trajectory)`.
    use_trajectory_loss (`bool`, *optional*, defaults to `True`):
        Whether trajectory targets, when given, enter the loss.
    trajectory_prediction (`str`, *optional*, defaults to `"head"`):
        The student's distribution over its image tokens that the trajectory loss compares with the teacher's.
        `"head"` (the paper): the trajectory head, a query projection of the latent state dotted with the image
        tokens' final states. Its bias alone can form a fixed query that meets the target (the marked object's
        features are in the image states), so the loss need not put anything into the latent tokens.
        `"latent_attention"`: the latent tokens' own attention over the image tokens (the mean over the K latent
        query rows, the heads and `trajectory_attention_layers`, renormalised over the image tokens), so that what the
        latent tokens read is where the teacher looked. It reads the attention through sdpa (the text attention must
        be `"sdpa"` or `"eager"`) and is refused under activation checkpointing, whose recomputation would not read it.
    trajectory_attention_layers (`list[int]`, *optional*):
        The decoder layers (indices, negative from the top) whose latent-token attention `"latent_attention"` reads;
        every layer when unset.
    training_stage (`int`, *optional*, defaults to 0):
        0: single stage, causal attention. 1: bottleneck, the answer (and, with `block_prompt`, the question after
        the image) cannot attend to image tokens; the latent tokens can. 2: joint, causal attention.
    block_prompt (`bool`, *optional*, defaults to `True`):
        In stage 1, also block the text between the image and the first latent token from the image.
    ce_in_stage1 (`bool`, *optional*, defaults to `True`):
        Whether the cross-entropy enters the stage-1 loss. The reference README says stage 1 optimises only the
        visual losses while its code keeps CE; we follow the code, whose scripts produced the released figures.
        When off, `loss_ce` is still computed and reported, without gradient.
    head_input (`str`, *optional*, defaults to `"last_latent"`):
        Which latent state feeds the two heads: `"last_latent"` (the paper) or `"mean_latent"` (the mean over the
        K latent tokens).
    head_layer (`int`, *optional*):
        Which hidden states feed the two heads (the latent state, and the image-token states the trajectory head
        scores): unset (the paper), the final ones; `k` (1 <= k < the number of decoder layers), those after the
        first `k` decoder layers, through the final norm (as the final states are). A position's final state is read
        by no other position (each layer's attention reads the states entering it), so what the heads supervise there
        can form in the last layer and never reach the answer; the states after layer `k` are what layer `k + 1` lets
        the answer read.
    """

    # Latent tokens.
    num_latent_tokens: int = 4
    latent_token_ids: list[int] | None = None
    latent_separator: str = " "
    # Distillation heads and losses.
    teacher_hidden_size: int | None = None
    ce_loss_weight: float = 1.0
    vtop_loss_weight: float = 0.3
    trajectory_loss_weight: float = 0.3
    use_trajectory_loss: bool = True
    trajectory_prediction: Literal["head", "latent_attention"] = "head"
    trajectory_attention_layers: list[int] | None = None
    head_input: Literal["last_latent", "mean_latent"] = "last_latent"
    head_layer: int | None = None
    # Stage schedule (docs/method.md section 3).
    training_stage: Literal[0, 1, 2] = 0
    block_prompt: bool = True
    ce_in_stage1: bool = True

    def validate_lavit(self):
        """Part of `@strict`-powered validation: the latent tokens and the stage must make sense together."""
        if self.num_latent_tokens < 1:
            raise ValueError(f"num_latent_tokens must be at least 1, got {self.num_latent_tokens}.")
        if self.latent_token_ids is not None:
            if len(self.latent_token_ids) != self.num_latent_tokens:
                raise ValueError(
                    f"latent_token_ids has {len(self.latent_token_ids)} ids but num_latent_tokens is "
                    f"{self.num_latent_tokens}."
                )
            vocab_size = self.get_text_config().vocab_size
            out_of_range = [i for i in self.latent_token_ids if not 0 <= i < vocab_size]
            if out_of_range:
                raise ValueError(f"latent_token_ids {out_of_range} lie outside the vocabulary (size {vocab_size}).")
        if self.trajectory_attention_layers is not None and self.trajectory_prediction != "latent_attention":
            raise ValueError(
                "trajectory_attention_layers is read only with trajectory_prediction='latent_attention', not "
                f"{self.trajectory_prediction!r}."
            )
        if self.trajectory_attention_layers is not None:
            num_layers = self.get_text_config().num_hidden_layers
            outside = [i for i in self.trajectory_attention_layers if not -num_layers <= i < num_layers]
            if outside or not self.trajectory_attention_layers:
                raise ValueError(
                    f"trajectory_attention_layers {self.trajectory_attention_layers} must be a non-empty list of "
                    f"layer indices in [-{num_layers}, {num_layers})."
                )
        if self.head_layer is not None:
            num_layers = self.get_text_config().num_hidden_layers
            if not 1 <= self.head_layer < num_layers:
                raise ValueError(
                    f"head_layer={self.head_layer}: the heads read the states after 1 to {num_layers - 1} of the "
                    f"{num_layers} decoder layers (unset: the final states)."
                )
        if self.teacher_hidden_size is not None and self.teacher_hidden_size < 1:
            raise ValueError(f"teacher_hidden_size must be positive, got {self.teacher_hidden_size}.")


__all__ = ["LaViTConfigMixin"]
