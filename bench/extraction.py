"""Benchmark of teacher extraction: attention trajectory + V_top, ours against the reference method.

- **ours**: one `sdpa` forward of the base model (no LM head) whose text attention runs through the capturing sdpa
  (`datasets_scripts.teacher.capturing_sdpa_attention`): on the last 8 layers it scores the response rows against the
  queries and keys the attention receives; V_top comes from a hook on the last decoder layer.
- **reference** (the LaViT reference extractor's method): the teacher under `eager` attention, one forward with
  `output_attentions=True` (every layer's `[heads, S, S]` weights, and the LM head) for the trajectory, then a second
  forward with `output_hidden_states=True` for V_top.

Both run in the same process on the same random-weight teacher; the table gives seconds per sample, samples per
second, peak GPU memory and peak activation memory (peak minus the weights), and ratios against the reference. Teacher
generation is reported separately: batched (left padding) against one prompt at a time.

Examples:
    python bench/extraction.py --shape tiny --device cpu            # smoke test, under a minute
    python bench/extraction.py --shape tiny --device cpu --family gemma3   # any tiny teacher family
    python bench/extraction.py --shape 7b --device cuda --tokens 2000   # Qwen2.5-VL-7B shape, random bf16 weights
"""

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration


sys.path.insert(0, str(Path(__file__).resolve().parent))

from shapes import shape_config  # noqa: E402

from datasets_scripts.teacher import (  # noqa: E402
    TEACHER_FAMILIES,
    ExtractionSettings,
    GenerationSettings,
    TeacherExtractor,
    normalise,
)
from lavit_hf import build_qwen2_5_vl_processor, build_tiny_base
from lavit_hf.attention import use_packed_vision_attention


QUESTION = "Which object is closest to the red car, and what colour is it? Explain step by step."
SENTENCE = "The red car is parked near the left edge of the street, and the closest object to it is a blue bicycle. "


def build_teacher(shape: str, device: str, image_side: int, family: str = "qwen2_5_vl"):
    pixels = image_side * image_side
    if shape == "tiny":
        model, processor = build_tiny_base(family, seed=0, min_pixels=56 * 56, max_pixels=pixels)
        return model.to(device), processor
    if family != "qwen2_5_vl":
        raise ValueError(f"--shape {shape} is a Qwen2.5-VL shape; --family {family} runs at --shape tiny.")
    processor = build_qwen2_5_vl_processor(min_pixels=56 * 56, max_pixels=pixels)
    # 152,064 rows as in the checkpoint (the tokenizer has fewer; the extra rows are the checkpoint's spare ones)
    config = Qwen2_5_VLConfig(**shape_config("7b", max(152_064, len(processor.tokenizer))))
    config._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    return model.eval(), processor


def response_text(processor, n_tokens: int) -> str:
    words = []
    while len(processor.tokenizer(" ".join(words) or "x")["input_ids"]) < n_tokens:
        words.extend(SENTENCE.split())
    return " ".join(words).strip()


def image_side_for(total_tokens: int, text_tokens: int) -> int:
    """Side (pixels, multiple of 28) of a square image giving about `total_tokens - text_tokens` image tokens."""
    return 28 * max(2, int(math.sqrt(max(4, total_tokens - text_tokens))))


class Meter:
    """Wall time and peak memory of a callable (CUDA only for memory)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn, repeats: int):
        fn()  # warm-up (first-call setup, kernel selection, allocator)
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        for _ in range(repeats):
            result = fn()
        if self.cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / repeats
        peak = torch.cuda.max_memory_allocated() if self.cuda else None
        return result, seconds, peak, (peak - base) if self.cuda else None


def reference_extract(model, inputs, span, image_positions, layers):
    """The reference method: eager attention with `output_attentions=True`, then a second forward for V_top."""
    rows = torch.arange(*span, device=image_positions.device)
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions
        per_layer = [attentions[layer][0][:, rows][:, :, image_positions].float().mean(0) for layer in layers]
        trajectory = normalise(torch.stack(per_layer).mean(0).mean(0))
        del attentions
        model.model.language_model.config.tie_last_hidden_states = False
        hidden = model(**inputs, output_hidden_states=True).hidden_states[-1][0, image_positions]
    return trajectory, hidden.float()


def bench_extraction(args, model, processor, image, response, meter):
    extractor = TeacherExtractor(model, processor, ExtractionSettings(methods=("attention",)))
    sample = extractor.encode(image, QUESTION, response)
    inputs = {k: v.to(extractor.device) for k, v in sample.inputs.items()}
    positions = sample.image_positions.to(extractor.device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    # Ours runs the teacher as `lavit extract` loads it: the vision tower's windows in one sdpa call per layer.
    if extractor.family.packed_vision:
        use_packed_vision_attention(model)
    ours, t_ours, peak_ours, act_ours = meter(lambda: extractor.extract(image, QUESTION, response), args.repeats)
    model.set_attn_implementation("eager")
    try:
        ref, t_ref, peak_ref, act_ref = meter(
            lambda: reference_extract(model, inputs, sample.span, positions, extractor.layers), args.repeats
        )
    finally:
        model.set_attn_implementation("sdpa")
        model.model.language_model.config.tie_last_hidden_states = True
    diff_traj = float((ours.trajectories["attention"] - ref[0].cpu()).abs().max())
    # Relative to the largest activation: bf16 hidden states of random weights reach the hundreds.
    diff_vtop = float((ours.vtop_tokens - ref[1].cpu()).abs().max() / ref[1].abs().max())
    info = {"tokens": inputs["input_ids"].shape[1], "image_tokens": len(positions),
            "response_tokens": sample.span[1] - sample.span[0], "weights_gib": weights / 2**30,
            "diff_traj": diff_traj, "diff_vtop": diff_vtop, "layers": extractor.layers}
    rows = {"ours (capturing sdpa)": (t_ours, peak_ours, act_ours)}
    rows["reference (eager, 2 forwards)"] = (t_ref, peak_ref, act_ref)
    return info, rows


def bench_generation(args, model, processor, image, meter):
    settings = GenerationSettings(max_new_tokens=args.gen_tokens, batch_size=args.gen_batch)
    # Never stop early: random weights could emit end-of-sequence at different steps in the two modes.
    settings_kwargs = settings.generate_kwargs()
    extractor = TeacherExtractor(model, processor, ExtractionSettings(), settings)
    extractor.generation.generate_kwargs = lambda: {**settings_kwargs, "min_new_tokens": args.gen_tokens}
    images, questions = [image] * args.gen_batch, [f"{QUESTION} ({i})" for i in range(args.gen_batch)]
    _, t_batch, peak_b, _ = meter(lambda: extractor.generate(images, questions), 1)  # one timed run after a warm-up
    _, t_single, peak_s, _ = meter(lambda: [extractor.generate([i], [q]) for i, q in zip(images, questions)], 1)
    return {f"batched (batch {args.gen_batch})": (t_batch / args.gen_batch, peak_b, None),
            "one at a time": (t_single / args.gen_batch, peak_s, None)}


def gib(value):
    return "n/a" if value is None else f"{value / 2**30:.2f}"


def print_table(title: str, rows: dict, reference: str):
    t_ref, _, act_ref = rows[reference]
    print(f"\n{title}")
    print("| method | s / sample | samples / s | peak GiB | activation GiB | speed-up | activation ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (seconds, peak, act) in rows.items():
        ratio = "n/a" if act is None or act_ref is None or act <= 0 else f"{act_ref / act:.1f}x less"
        cells = [name, f"{seconds:.3f}", f"{1 / seconds:.2f}", gib(peak), gib(act), f"{t_ref / seconds:.1f}x", ratio]
        print("| " + " | ".join(cells) + " |")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", "7b"], default="tiny", help="teacher shape (random weights)")
    parser.add_argument("--family", choices=list(TEACHER_FAMILIES), default="qwen2_5_vl",
                        help="teacher family of the tiny shape (7b is Qwen2.5-VL)")
    parser.add_argument("--tokens", type=int, default=None, help="approximate sequence length of a sample (default: "
                        "2000 on GPU; 1000 on CPU, where the eager reference's vision tower dominates the smoke test)")
    parser.add_argument("--response-tokens", type=int, default=128, help="response tokens (the trajectory's rows)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (default: 3 after a warm-up on "
                        "GPU, 1 on CPU)")
    parser.add_argument("--gen-batch", type=int, default=None, help="prompts in the batched generation run "
                        "(default: 8 on GPU, 4 on CPU)")
    parser.add_argument("--gen-tokens", type=int, default=None, help="new tokens per prompt in the generation runs "
                        "(default: 64 on GPU, 16 on CPU)")
    parser.add_argument("--gen-tokens-side", type=int, default=448, help="image side (pixels) for the generation runs")
    return parser


def main(args: argparse.Namespace) -> None:
    cuda = args.device.startswith("cuda")
    args.tokens = args.tokens or (2000 if cuda else 1000)
    args.repeats = args.repeats or (3 if cuda else 1)
    args.gen_batch = args.gen_batch or (8 if cuda else 4)
    args.gen_tokens = args.gen_tokens or (64 if cuda else 16)
    side = image_side_for(args.tokens, args.response_tokens + 40)
    model, processor = build_teacher(args.shape, args.device, side, args.family)
    image = Image.effect_noise((side, side), 64).convert("RGB")
    response = response_text(processor, args.response_tokens)
    meter = Meter(args.device)
    info, rows = bench_extraction(args, model, processor, image, response, meter)
    print(f"shape {args.shape}, device {args.device}, {info['tokens']} tokens ({info['image_tokens']} image, "
          f"{info['response_tokens']} response), weights {info['weights_gib']:.2f} GiB, layers {info['layers']}")
    print(f"ours vs reference: max |trajectory diff| {info['diff_traj']:.2e}, "
          f"max |V_top diff| / max |V_top| {info['diff_vtop']:.2e}")
    print_table("Attention trajectory + V_top", rows, "reference (eager, 2 forwards)")
    small = image.resize((args.gen_tokens_side, args.gen_tokens_side))
    print_table(f"Teacher generation ({args.gen_tokens} new tokens, image {args.gen_tokens_side}px)",
                bench_generation(args, model, processor, small, meter), "one at a time")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(make_parser().parse_args())
