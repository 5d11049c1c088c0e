"""Benchmark of teacher extraction: attention trajectory + V_top, ours (one sample per forward and batched) against the
reference method, and the teacher's generation with each key-value cache.

- **reference** (the LaViT reference extractor's method): the teacher under `eager` attention, one forward with
  `output_attentions=True` (every layer's `[heads, S, S]` weights, and the LM head) for the trajectory, then a second
  forward with `output_hidden_states=True` for V_top; one sample per forward.
- **ours**: one `sdpa` forward of the base model (no LM head) whose text attention runs through the capturing sdpa
  (`datasets_scripts.teacher.capturing_sdpa_attention`): on the last 8 layers it scores the response rows against the
  queries and keys the attention receives; V_top comes from a hook on the last decoder layer. One sample per forward
  (`TeacherExtractor.extract`), then `--batch-sizes` samples per forward (`extract_batch`, right-padded; the samples
  here have equal lengths, so there is no padding).

Both run in the same process on the same random-weight teacher; the table gives seconds per sample, samples per
second, peak GPU memory and peak activation memory (peak minus the weights), and ratios against the reference. The
generation table gives tokens per second of batched greedy generation (left padding, `--gen-tokens` new tokens per
prompt, end-of-sequence suppressed) with transformers' dynamic cache, a static cache and the static cache with the
decoding step compiled by `torch.compile` (`GenerationSettings.cache`), plus the dynamic cache one prompt at a time;
the first call of each mode (compilation, cache allocation) is timed apart, and each mode's responses are compared
with the dynamic cache's (random bf16 weights make near-ties between tokens common, so a rounding difference can
change a greedy token).

Examples:
    python bench/extraction.py --shape tiny --device cpu                   # smoke test, about a minute
    python bench/extraction.py --shape tiny --device cpu --family gemma3   # any tiny teacher family
    python bench/extraction.py --shape 7b --device cuda                    # Qwen2.5-VL-7B shape, random bf16 weights
    python bench/extraction.py --shape 32b --device cuda                   # Qwen2.5-VL-32B shape (66 GB of weights)
"""

import argparse
import logging
import math
import sys
import time
import traceback
from pathlib import Path

import torch
from PIL import Image
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration


sys.path.insert(0, str(Path(__file__).resolve().parent))

from shapes import SHAPES, shape_config  # noqa: E402

from datasets_scripts.teacher import (  # noqa: E402
    GENERATION_CACHES,
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
REFERENCE = "reference (eager, 2 forwards)"


def build_teacher(shape: str, device: str, image_side: int, family: str = "qwen2_5_vl"):
    pixels = image_side * image_side
    if shape == "tiny":
        model, processor = build_tiny_base(family, seed=0, min_pixels=56 * 56, max_pixels=pixels)
        return model.to(device), processor
    if family != "qwen2_5_vl":
        raise ValueError(f"--shape {shape} is a Qwen2.5-VL shape; --family {family} runs at --shape tiny.")
    processor = build_qwen2_5_vl_processor(min_pixels=56 * 56, max_pixels=pixels)
    # 152,064 rows as in the checkpoint (the tokenizer has fewer; the extra rows are the checkpoint's spare ones)
    config = Qwen2_5_VLConfig(**shape_config(shape, max(152_064, len(processor.tokenizer))))
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
    """Wall time and peak memory of a callable (CUDA only for memory), after an untimed first call whose time is kept
    apart (`first_seconds`: compilation, allocation) unless `warm_up=False`."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.first_seconds: float | None = None

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn, repeats: int, warm_up: bool = True):
        self.first_seconds = None
        if warm_up:
            self._sync()
            start = time.perf_counter()
            fn()  # first-call setup, kernel selection, allocator, compilation
            self._sync()
            self.first_seconds = time.perf_counter() - start
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        for _ in range(repeats):
            result = fn()
        self._sync()
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


def max_differences(outputs, references) -> tuple[float, float]:
    """Largest |trajectory difference|, and largest |V_top difference| relative to the largest |V_top| (bf16 hidden
    states of random weights reach the hundreds), over the samples."""
    traj = vtop = 0.0
    for out, (trajectory, features) in zip(outputs, references, strict=True):
        traj = max(traj, float((out.trajectories["attention"] - trajectory.cpu()).abs().max()))
        vtop = max(vtop, float((out.vtop_tokens - features.cpu()).abs().max() / features.abs().max().cpu()))
    return traj, vtop


def bench_extraction(args, model, processor, images, response, meter):
    extractor = TeacherExtractor(model, processor, ExtractionSettings(methods=("attention",)))
    questions = [f"{QUESTION} ({i})" for i in range(len(images))]
    responses = [response] * len(images)
    batch = extractor.encode(images[0], questions[0], response)
    sample = batch.samples[0]
    inputs = {k: v.to(extractor.device) for k, v in batch.inputs.items()}
    positions = sample.image_positions.to(extractor.device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    n = len(images)
    rows = {}
    model.set_attn_implementation("eager")
    try:
        ref, t_ref, peak_ref, act_ref = meter(
            lambda: reference_extract(model, inputs, sample.span, positions, extractor.layers), args.repeats
        )
    finally:
        model.set_attn_implementation("sdpa")
        model.model.language_model.config.tie_last_hidden_states = True
    rows[REFERENCE] = (t_ref, peak_ref, act_ref)
    # Ours runs the teacher as `lavit extract` loads it: the vision tower's windows in one sdpa call per layer.
    if extractor.family.packed_vision:
        use_packed_vision_attention(model)

    def one_per_forward():
        return [extractor.extract(i, q, r) for i, q, r in zip(images, questions, responses, strict=True)]

    single, t_one, peak_one, act_one = meter(one_per_forward, args.repeats)
    rows["ours, 1 sample per forward"] = (t_one / n, peak_one, act_one)
    diffs = {"ours vs reference (sample 0)": max_differences(single[:1], [ref])}
    for size in args.batch_sizes:

        def batched(size=size):
            outputs = []
            for first in range(0, n, size):
                last = first + size
                outputs += extractor.extract_batch(images[first:last], questions[first:last], responses[first:last])
            return outputs

        outputs, seconds, peak, act = meter(batched, args.repeats)
        rows[f"ours, {size} samples per forward"] = (seconds / n, peak, act)
        reference = [(out.trajectories["attention"], out.vtop_tokens) for out in single]
        diffs[f"ours batched {size} vs 1 per forward"] = max_differences(outputs, reference)
    info = {"tokens": inputs["input_ids"].shape[1], "image_tokens": len(positions),
            "response_tokens": sample.span[1] - sample.span[0], "weights_gib": weights / 2**30,
            "layers": extractor.layers, "diffs": diffs}
    return info, rows


def bench_generation(args, model, processor, image, meter):
    """Tokens per second of batched greedy generation with each cache, and the dynamic cache one prompt at a time."""
    images = [image] * args.gen_batch
    questions = [f"{QUESTION} ({i})" for i in range(args.gen_batch)]
    new_tokens = args.gen_batch * args.gen_tokens
    rows, notes, responses = {}, [], {}
    for cache in args.gen_caches:
        settings = GenerationSettings(max_new_tokens=args.gen_tokens, batch_size=args.gen_batch, cache=cache)
        extractor = TeacherExtractor(model, processor, ExtractionSettings(), settings)
        # Never stop early: random weights could emit end-of-sequence at different steps in different modes.
        kwargs = settings.generate_kwargs()
        extractor.generation.generate_kwargs = lambda kwargs=kwargs: {**kwargs, "min_new_tokens": args.gen_tokens}
        name = f"{cache} cache, batch {args.gen_batch}"
        try:
            responses[cache], seconds, peak, _ = meter(lambda e=extractor: e.generate(images, questions), 1)
        except Exception as error:  # a mode that fails is reported, not fatal: the others still run
            notes.append(f"{name}: failed: {type(error).__name__}: {error}".splitlines()[0][:400])
            traceback.print_exc(limit=4)
            continue
        rows[name] = (seconds, meter.first_seconds, peak, new_tokens / seconds)
        if cache != "dynamic" and "dynamic" in responses:
            same = sum(a == b for a, b in zip(responses[cache], responses["dynamic"], strict=True))
            notes.append(f"{name}: {same}/{args.gen_batch} responses identical to the dynamic cache's")
        if cache == "dynamic":  # warm from the batched run; a few prompts suffice for the rate
            count = min(2, args.gen_batch)
            pairs = list(zip(images[:count], questions[:count], strict=True))
            _, seconds, peak, _ = meter(
                lambda e=extractor, pairs=pairs: [e.generate([i], [q]) for i, q in pairs], 1, warm_up=False
            )
            rows[f"dynamic cache, one prompt at a time ({count} prompts)"] = (
                seconds, None, peak, count * args.gen_tokens / seconds
            )
    return rows, notes


def gib(value):
    return "n/a" if value is None else f"{value / 2**30:.2f}"


def print_extraction_table(title: str, rows: dict):
    t_ref, _, act_ref = rows[REFERENCE]
    print(f"\n{title}")
    print("| method | s / sample | samples / s | peak GiB | activation GiB | speed-up | activation ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (seconds, peak, act) in rows.items():
        ratio = "n/a" if act is None or act_ref is None or act <= 0 else f"{act_ref / act:.1f}x less"
        cells = [name, f"{seconds:.3f}", f"{1 / seconds:.2f}", gib(peak), gib(act), f"{t_ref / seconds:.2f}x", ratio]
        print("| " + " | ".join(cells) + " |")
    sys.stdout.flush()


def print_generation_table(title: str, rows: dict, notes: list[str], reference: str):
    print(f"\n{title}")
    print("| mode | s (timed call) | first call s | tokens / s | peak GiB | speed-up |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = rows[reference][3] if reference in rows else None
    for name, (seconds, first, peak, rate) in rows.items():
        speed = "n/a" if base is None else f"{rate / base:.2f}x"
        first = "n/a" if first is None else f"{first:.2f}"
        print(f"| {name} | {seconds:.2f} | {first} | {rate:.1f} | {gib(peak)} | {speed} |")
    for note in notes:
        print(f"- {note}")
    sys.stdout.flush()


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", *SHAPES], default="tiny", help="teacher shape (random weights)")
    parser.add_argument("--family", choices=list(TEACHER_FAMILIES), default="qwen2_5_vl",
                        help="teacher family of the tiny shape (the others are Qwen2.5-VL)")
    parser.add_argument("--tokens", type=int, default=None, help="approximate sequence length of a sample (default: "
                        "2000 on GPU; 1000 on CPU, where the eager reference's vision tower dominates the smoke test)")
    parser.add_argument("--response-tokens", type=int, default=128, help="response tokens (the trajectory's rows)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8], help="samples per forward of the "
                        "batched rows; the largest is also the number of samples each row extracts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (default: 3 after a warm-up on "
                        "GPU, 1 on CPU)")
    parser.add_argument("--gen-batch", type=int, default=None, help="prompts in the batched generation runs "
                        "(default: 8 on GPU, 4 on CPU)")
    parser.add_argument("--gen-tokens", type=int, default=None, help="new tokens per prompt in the generation runs "
                        "(default: 128 on GPU, 16 on CPU)")
    parser.add_argument("--gen-caches", nargs="*", choices=GENERATION_CACHES, default=list(GENERATION_CACHES),
                        help="generation caches to time (none: skip generation)")
    parser.add_argument("--gen-image-side", type=int, default=448, help="image side (pixels) for the generation runs")
    return parser


def main(args: argparse.Namespace) -> None:
    cuda = args.device.startswith("cuda")
    args.tokens = args.tokens or (2000 if cuda else 1000)
    args.repeats = args.repeats or (3 if cuda else 1)
    args.gen_batch = args.gen_batch or (8 if cuda else 4)
    args.gen_tokens = args.gen_tokens or (128 if cuda else 16)
    if any(size < 1 for size in args.batch_sizes):
        raise SystemExit("--batch-sizes must be positive.")
    start = time.perf_counter()
    side = image_side_for(args.tokens, args.response_tokens + 40)
    model, processor = build_teacher(args.shape, args.device, side, args.family)
    images = [Image.effect_noise((side, side), 48 + i).convert("RGB") for i in range(max(args.batch_sizes))]
    response = response_text(processor, args.response_tokens)
    meter = Meter(args.device)
    print(f"teacher built in {time.perf_counter() - start:.0f} s")
    info, rows = bench_extraction(args, model, processor, images, response, meter)
    print(f"shape {args.shape}, device {args.device}, {info['tokens']} tokens ({info['image_tokens']} image, "
          f"{info['response_tokens']} response), weights {info['weights_gib']:.2f} GiB, layers {info['layers']}, "
          f"{len(images)} samples per row")
    for name, (traj, vtop) in info["diffs"].items():
        print(f"{name}: max |trajectory diff| {traj:.2e}, max |V_top diff| / max |V_top| {vtop:.2e}")
    print_extraction_table("Attention trajectory + V_top", rows)
    print(f"(extraction done at {time.perf_counter() - start:.0f} s)")
    if args.gen_caches:
        small = images[0].resize((args.gen_image_side, args.gen_image_side))
        gen_rows, notes = bench_generation(args, model, processor, small, meter)
        title = (f"Teacher generation ({args.gen_batch} prompts x {args.gen_tokens} new tokens, image "
                 f"{args.gen_image_side}px)")
        print_generation_table(title, gen_rows, notes, f"dynamic cache, batch {args.gen_batch}")
    print(f"(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(make_parser().parse_args())
