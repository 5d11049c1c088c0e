"""Model FLOPs of one training micro-batch of a Qwen2.5-VL or LaViT student: the matrix-multiply work the step needs,
counted from the model's own modules and the batch's shapes (the numerator of model FLOPs utilisation as PaLM defines
it, Chowdhery et al. 2022, appendix B: what the model needs, not what the kernels happen to run; recomputation and
padding are not counted).

- Linear layers, `2 * in * out` FLOPs a row forward, as many again for the gradient of their input where the
  gradient flows through them (every module of the language model; the vision tower's only if it trains), and as many
  again for that of their weight where it trains. Rows: the batch's real tokens (padding left out) in the language
  model; in its head only the positions the loss reads (those whose next token is labelled: the answer, a few
  hundred of a LaViT sample's two thousand tokens, which is all that LaViT's training forward projects onto the
  vocabulary); every image patch in the vision tower and its patch embedding, one row in four (`merge_size**2`) in
  the patch merger, one row a sample in the LaViT heads.
- The trajectory head's product of its query with each image token of the sample.
- Attention, the two products (scores and weighted values): causal over each sample's real tokens in the language
  model (`2 * heads * head_dim * T * (T + 1)` a layer forward: only the keys at or before each query), over each
  window of the vision tower's windowed blocks and over each whole image in its full-attention blocks
  (`4 * hidden * S**2` a layer forward), backward twice the forward where the gradient flows.
- Left out: normalisations, activations, rotary embeddings, the loss and the optimiser (elementwise, no products),
  and, with `trajectory_prediction="latent_attention"`, the latent rows' attention weights (a few rows a sample).

The `6 * N * T` convention (`N` all parameters, `T` real tokens) that the figures of this project used until now
differs in three ways for these models: it counts the frozen vision tower as trained on one row per token, where it
runs forward only on four patches per image token (and on no text token); it counts the language-model head on every
token, where the loss needs it on the labelled ones; and it counts no attention. The first and last add work, the
second removes some: on the 3B shape, for four 1344x1008 images (7,532 tokens, 500 of them labelled), 172.2 TFLOP
against 170.5 (`bench/train_step.py` prints both MFUs).
"""

import torch
from torch import nn


def _base_model(model: nn.Module) -> nn.Module:
    """The model under a PEFT wrapper, else the model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _gradient_factor(part: nn.Module) -> int:
    """1 for a part run forward only (nothing in it trains), 3 for one the gradient flows through."""
    return 3 if any(p.requires_grad for p in part.parameters()) else 1


def _linear_flops(module: nn.Linear, rows: float, backpropagated: bool) -> float:
    per_row = 2.0 * module.in_features * module.out_features
    passes = 1 + int(backpropagated) + int(backpropagated and module.weight.requires_grad)
    return passes * per_row * rows


def _window_lengths(grid_thw: torch.Tensor, vision_config) -> torch.Tensor:
    """The patches in each window of the tower's windowed blocks, as Qwen2.5-VL partitions them."""
    from transformers.vision_utils import get_vision_window_index

    _, cu_window_seqlens = get_vision_window_index(
        grid_thw, vision_config.spatial_merge_size, vision_config.window_size, vision_config.patch_size
    )
    return cu_window_seqlens.diff().double()


def training_flops(model: nn.Module, batch: dict) -> dict[str, float]:
    """The model FLOPs of one training forward and backward of `batch` (see the module docstring), by part:
    `language linear`, `language attention`, `vision linear`, `vision attention`, `heads`.

    Args:
        model: a Qwen2.5-VL or LaViT (Qwen2.5-VL family) model, optionally PEFT-wrapped, with the parts that do not
            train frozen (`requires_grad=False`) as they are in the timed step.
        batch: the collated batch: `attention_mask` (2-D), `image_grid_thw` and `labels` (without labels, every
            real token is counted through the head).
    """
    model = _base_model(model)
    inner = model.model
    language, visual = inner.language_model, inner.visual
    text_config, vision_config = language.config, visual.config
    lengths = batch["attention_mask"].sum(dim=-1).double().cpu()
    tokens = float(lengths.sum())
    grid = batch["image_grid_thw"].cpu()
    frame_patches = (grid[:, 1] * grid[:, 2]).double().repeat_interleave(grid[:, 0])
    patches = float(frame_patches.sum())
    merge_rows = patches / vision_config.spatial_merge_size**2

    # The loss reaches every language-model layer (its parameters or the heads'), so every one backpropagates.
    counts = {"language linear": 0.0, "language attention": 0.0, "vision linear": 0.0, "vision attention": 0.0}
    for module in language.modules():
        if isinstance(module, nn.Linear):
            counts["language linear"] += _linear_flops(module, tokens, backpropagated=True)
    labels = batch.get("labels")
    read_rows = tokens if labels is None else float((labels[:, 1:] != -100).sum())
    counts["language linear"] += _linear_flops(model.lm_head, read_rows, backpropagated=True)
    # The LaViT heads, where the batch has their targets: the V_top head on the latent state; the trajectory head's
    # query projection of it, and the query's product with each of the sample's image tokens.
    samples = float(lengths.numel())
    counts["heads"] = 0.0
    if "vtop_target" in batch and getattr(model, "vtop_head", None) is not None:
        counts["heads"] += sum(
            _linear_flops(module, samples, True)
            for module in model.vtop_head.modules()
            if isinstance(module, nn.Linear)
        )
    if "trajectory_target" in batch and getattr(model.config, "trajectory_prediction", None) == "head":
        image_tokens = float((batch["input_ids"] == model.config.image_token_id).sum())
        query = model.trajectory_query
        counts["heads"] += _linear_flops(query, samples, True) + 3 * 2.0 * query.out_features * image_tokens
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    causal_pairs = float((lengths * (lengths + 1)).sum())
    counts["language attention"] = (
        3 * text_config.num_hidden_layers * 2.0 * text_config.num_attention_heads * head_dim * causal_pairs
    )

    vision_factor = _gradient_factor(visual)
    backpropagated = vision_factor == 3
    for name, module in visual.named_modules():
        if isinstance(module, nn.Linear):
            counts["vision linear"] += _linear_flops(
                module, merge_rows if name.startswith("merger") else patches, backpropagated
            )
    # A Conv3d with one output per patch (a matrix product per patch) on the pixels, which need no gradient.
    embed_weight = visual.patch_embed.proj.weight
    counts["vision linear"] += (1 + int(embed_weight.requires_grad)) * 2.0 * embed_weight.numel() * patches
    full_blocks = len(vision_config.fullatt_block_indexes)
    windowed_blocks = vision_config.depth - full_blocks
    per_pair = vision_factor * 4.0 * vision_config.hidden_size
    counts["vision attention"] = per_pair * (
        full_blocks * float((frame_patches**2).sum())
        + windowed_blocks * float((_window_lengths(grid, vision_config) ** 2).sum())
    )
    return counts


def six_n_t_flops(model: nn.Module, batch: dict) -> float:
    """`6 * N * T`: all parameters times the batch's real tokens, six FLOPs each (the earlier convention)."""
    return 6.0 * sum(p.numel() for p in model.parameters()) * float(batch["attention_mask"].sum())
