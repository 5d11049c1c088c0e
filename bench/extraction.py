"""Benchmark of teacher extraction: attention trajectory + V_top, ours (one sample per forward and batched, eager and
with the teacher's blocks compiled) against the reference method, and the teacher's generation with each key-value
cache.

- **reference** (the LaViT reference extractor's method): the teacher under `eager` attention, one forward with
  `output_attentions=True` (every layer's `[heads, S, S]` weights, and the LM head) for the trajectory, then a second
  forward with `output_hidden_states=True` for V_top; one sample per forward.
- **ours, eager**: one `sdpa` forward of the base model (no LM head) whose text attention runs through the observed
  sdpa (`lavit_hf.attention.observed_sdpa_attention`): on the last 8 layers it scores the response rows against
  the queries and keys the attention receives; V_top comes from a hook on the last decoder layer. One sample per
  forward, then `--batch-sizes` samples per forward (`extract_batches`, right-padded; the samples here have equal
  lengths, so there is no padding). Each row includes the processor's work on the samples (`encode_batch`), done for
  each batch in a background thread while the teacher runs the batch before, as `lavit extract` does.
- **ours, compiled** (`--compile-teacher`, default on CUDA): the same, with every decoder layer and vision block
  compiled in place (`TeacherExtractor(compile_blocks=True)`, what `lavit extract --compile_teacher` does); its first
  call per batch size (compilation) is timed apart in `first call s`.

Both run in the same process on the same random-weight teacher; the table gives seconds per sample, samples per
second, peak GPU memory and peak activation memory (peak minus the weights), and ratios against the reference; the
lines above it give the largest differences between the rows' trajectories and V_top. The generation table gives
tokens per second of batched greedy generation (left padding, `--gen-tokens` new tokens per prompt, end-of-sequence
suppressed) with transformers' dynamic cache, a static cache and the static cache with the decoding step compiled by
`torch.compile` (`GenerationSettings.cache`), plus the dynamic cache one prompt at a time; the first call of each mode
(compilation, cache allocation) is timed apart, and each mode's responses are compared with the dynamic cache's
(random bf16 weights make near-ties between tokens common, so a rounding difference can change a greedy token).

`--profile` instead profiles one batched extraction forward (`--profile-batch` samples, default the largest of
`--batch-sizes`) of each variant (eager, and compiled with `--compile-teacher`) with `torch.profiler`: the top ops by
self CUDA time and by self CPU time, kernel time against wall time, and the forward split into encoding (the
processor), vision tower, language model forward, attention capture, gradient trajectory (with `--methods ...
gradient`) and V_top hook, each as host time (the CPU inside the range) and kernel time (the GPU kernels it launched).

Examples:
    python bench/extraction.py --shape tiny --device cpu                   # smoke test, about a minute
    python bench/extraction.py --shape tiny --device cpu --family gemma3   # any tiny teacher family
    python bench/extraction.py --shape tiny --device cpu --profile         # smoke test of the profile
    python bench/extraction.py --shape 7b --device cuda                    # Qwen2.5-VL-7B shape, random bf16 weights
    python bench/extraction.py --shape 7b --device cuda --gen-caches --profile   # where a batched forward's time goes
    python bench/extraction.py --shape 32b --device cuda                   # Qwen2.5-VL-32B shape (66 GB of weights)
"""

import argparse
import collections
import contextlib
import functools
import logging
import math
import sys
import time
import traceback
from pathlib import Path
from unittest import mock

import torch
from PIL import Image
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration


sys.path.insert(0, str(Path(__file__).resolve().parent))

from shapes import SHAPES, shape_config  # noqa: E402

from datasets_scripts.teacher import (  # noqa: E402
    GENERATION_CACHES,
    TEACHER_FAMILIES,
    TRAJECTORY_METHODS,
    ExtractionSettings,
    GenerationSettings,
    TeacherExtractor,
    normalise,
)
from lavit_hf import build_qwen2_5_vl_processor, build_tiny_base
from lavit_hf.attention import OBSERVE_RANGE, use_packed_vision_attention


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


def relative_vtop_difference(features: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest |V_top difference| relative to the largest |V_top| (bf16 hidden states of random weights reach the
    hundreds)."""
    return float((features.cpu() - reference.cpu()).abs().max() / reference.abs().max().cpu())


def max_differences(outputs, references) -> tuple[float, float]:
    """Largest |attention trajectory difference| and largest relative V_top difference over the samples, against the
    reference's `(trajectory, V_top)` pairs."""
    traj = vtop = 0.0
    for out, (trajectory, features) in zip(outputs, references, strict=True):
        traj = max(traj, float((out.trajectories["attention"] - trajectory.cpu()).abs().max()))
        vtop = max(vtop, relative_vtop_difference(out.vtop_tokens, features))
    return traj, vtop


def output_differences(outputs, references) -> tuple[float, float]:
    """`max_differences` between two runs of ours, over every trajectory method, per step too."""
    traj = vtop = 0.0
    for out, ref in zip(outputs, references, strict=True):
        for name, trajectory in out.trajectories.items():
            steps = out.step_trajectories[name] - ref.step_trajectories[name]
            traj = max(traj, float((trajectory - ref.trajectories[name]).abs().max()), float(steps.abs().max()))
        vtop = max(vtop, relative_vtop_difference(out.vtop_tokens, ref.vtop_tokens))
    return traj, vtop


def run_batches(extractor, images, questions, responses, size: int):
    """Every sample through `extractor`, `size` samples per forward, each batch encoded while the teacher runs the one
    before (`extract_batches`, as `lavit extract` runs them)."""
    starts = range(0, len(images), size)
    batches = [(images[i : i + size], questions[i : i + size], responses[i : i + size]) for i in starts]
    outputs = []
    for result in extractor.extract_batches(batches):
        if isinstance(result, Exception):
            raise result
        outputs += result
    return outputs


def bench_extraction(args, model, processor, images, response, meter, report):
    """The extraction rows: the reference, then ours eager and (with `--compile-teacher`) compiled; `report(info,
    rows)` after each variant, so that a run stopped during compilation still shows the eager rows."""
    settings = ExtractionSettings(methods=tuple(args.methods))
    eager = TeacherExtractor(model, processor, settings)
    questions = [f"{QUESTION} ({i})" for i in range(len(images))]
    responses = [response] * len(images)
    batch = eager.encode(images[0], questions[0], response)
    sample = batch.samples[0]
    inputs = {k: v.to(eager.device) for k, v in batch.inputs.items()}
    positions = sample.image_positions.to(eager.device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    n = len(images)
    rows = {}
    model.set_attn_implementation("eager")
    try:
        ref, t_ref, peak_ref, act_ref = meter(
            lambda: reference_extract(model, inputs, sample.span, positions, eager.layers), args.repeats
        )
    finally:
        model.set_attn_implementation("sdpa")
        model.model.language_model.config.tie_last_hidden_states = True
    rows[REFERENCE] = (t_ref, peak_ref, act_ref, None)
    # Ours runs the teacher as `lavit extract` loads it: the vision tower's windows in one sdpa call per layer.
    if eager.family.packed_vision:
        use_packed_vision_attention(model)
    info = {"tokens": inputs["input_ids"].shape[1], "image_tokens": len(positions),
            "response_tokens": sample.span[1] - sample.span[0], "weights_gib": weights / 2**30,
            "layers": eager.layers, "diffs": {}}
    outputs, diffs = {}, info["diffs"]
    for variant in ("eager", "compiled") if args.compile_teacher else ("eager",):
        # Compiling changes the blocks in place: after every eager row.
        extractor = eager if variant == "eager" else TeacherExtractor(model, processor, settings, compile_blocks=True)
        for size in (1, *args.batch_sizes):
            outputs[variant, size], seconds, peak, act = meter(
                lambda e=extractor, size=size: run_batches(e, images, questions, responses, size), args.repeats
            )
            name = f"ours {variant}, {size} sample{'s' * (size > 1)} per forward"
            rows[name] = (seconds / n, peak, act, meter.first_seconds)
        diffs[f"ours {variant} vs reference (sample 0)"] = max_differences(outputs[variant, 1][:1], [ref])
        for size in args.batch_sizes:
            diffs[f"ours {variant} batched {size} vs {variant} 1 per forward"] = output_differences(
                outputs[variant, size], outputs[variant, 1]
            )
        if variant == "compiled":
            for size in (1, *args.batch_sizes):
                diffs[f"ours compiled vs eager, {size} per forward"] = output_differences(
                    outputs["compiled", size], outputs["eager", size]
                )
        report(info, rows)


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


# Profile ---------------------------------------------------------------------------------------------------------

# The ranges of the split: `torch.profiler.record_function` names (the library's, and the two `annotated` adds) and
# what each covers. The language model's range holds the capture's and the V_top hook's.
RANGES = {
    "lavit_encode": "encode (processor)",
    "bench_vision_tower": "vision tower",
    "bench_language_model": "language model",
    OBSERVE_RANGE: "attention capture",
    "lavit_vtop": "V_top hook",
    "lavit_gradient_trajectory": "gradient trajectory",
}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextlib.contextmanager
def annotated(model):
    """Profiler ranges around the vision tower (the model's `get_image_features`, projector included) and the language
    model's forward, for the split."""
    core = model.model
    get_image_features = core.get_image_features

    @functools.wraps(get_image_features)
    def vision_tower(*args, **kwargs):
        with torch.profiler.record_function("bench_vision_tower"):
            return get_image_features(*args, **kwargs)

    opened = []

    def enter(module, args):
        opened.append(torch.profiler.record_function("bench_language_model"))
        opened[-1].__enter__()

    def leave(module, args, output):
        opened.pop().__exit__(None, None, None)

    core.get_image_features = vision_tower  # an instance attribute shadows the method
    handles = [
        core.language_model.register_forward_pre_hook(enter), core.language_model.register_forward_hook(leave)
    ]
    try:
        yield
    finally:
        del core.get_image_features
        for handle in handles:
            handle.remove()


class SynchronisedRanges:
    """Stands in for `torch.profiler.record_function` during one forward: each range of `RANGES` synchronises the
    device on entry and on exit and adds its wall time to `seconds[name]` (other names get the real ranges)."""

    def __init__(self, device: str):
        self.device = device
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.record_function = torch.profiler.record_function

    def __call__(self, name: str, args: str | None = None):
        return self._timed(name) if name in RANGES else self.record_function(name, args)

    @contextlib.contextmanager
    def _timed(self, name: str):
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.seconds[name] += time.perf_counter() - start


def profile(args, model, processor, images, response) -> None:
    """Profile one batched extraction forward of each variant (see the module docstring); prints the tables and the
    split."""
    size = args.profile_batch or max(args.batch_sizes)
    images = (images * size)[:size]
    questions = [f"{QUESTION} ({i})" for i in range(size)]
    settings = ExtractionSettings(methods=tuple(args.methods))
    summary = []
    with annotated(model):
        extractor = TeacherExtractor(model, processor, settings)
        if extractor.family.packed_vision:
            use_packed_vision_attention(model)
        for variant in ("eager", "compiled") if args.compile_teacher else ("eager",):
            if variant == "compiled":  # in place: after the eager variant
                extractor = TeacherExtractor(model, processor, settings, compile_blocks=True)
            label = f"{variant}, {size} samples per forward ({', '.join(args.methods)})"
            summary.append(profile_variant(extractor, images, questions, [response] * size, label, args))
    print("\n" + "\n".join(summary))


def profile_variant(extractor, images, questions, responses, label: str, args) -> str:
    """Time one batched forward, split it (synchronised ranges), profile it and print the top ops; returns the
    summary lines."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity

    cuda = args.device.startswith("cuda")

    def forward():
        extractor.extract_batch(images, questions, responses)

    meter = Meter(args.device)
    _, seconds, _, _ = meter(forward, args.repeats)
    compile_seconds = meter.first_seconds
    ranges = SynchronisedRanges(args.device)
    with mock.patch.object(torch.profiler, "record_function", ranges):
        _, synchronised, _, _ = meter(forward, 1, warm_up=False)
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    synchronize(args.device)
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        forward()
        synchronize(args.device)
        wall = time.perf_counter() - start
    averages = prof.key_averages()
    if cuda:
        print(f"\n=== {label}: top ops by self CUDA time ===")
        print(averages.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70))
    print(f"\n=== {label}: top ops by self CPU time ===")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70))
    # Kernels, copies, memsets; not the GPU spans of the ranges (`record_function`), which cover kernels counted here.
    on_device = [e for e in averages if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    kernel_s = sum(e.self_device_time_total for e in on_device) / 1e6
    launches = sum(e.count for e in on_device)
    # Kernel time each range launched (the profiled, unsynchronised forward; backward kernels run on autograd's
    # device thread, outside the gradient range: its synchronised time above is the one to read).
    range_kernels = {
        e.key: e.device_time_total / 1e6 for e in averages if e.key in RANGES and e.device_type == DeviceType.CPU
    }
    timed = dict(ranges.seconds)
    for split in (timed, range_kernels):  # the language model's range holds the capture's and the hook's
        split["bench_language_model"] = split.get("bench_language_model", 0.0) - sum(
            split.get(name, 0.0) for name in (OBSERVE_RANGE, "lavit_vtop")
        )
    parts = [
        f"{RANGES[name]} {timed[name]:.3f} s"
        + (f" (kernels {range_kernels.get(name, 0.0):.3f} s)" if cuda and name != "lavit_gradient_trajectory" else "")
        for name in RANGES
        if name in timed
    ]
    rest = synchronised - sum(timed.values())
    first = "n/a" if compile_seconds is None else f"{compile_seconds:.1f} s"
    kernels = (
        f"kernel time {kernel_s:.3f} s ({100 * kernel_s / wall:.0f}% busy, {launches} kernel launches)"
        if cuda
        else "no kernel timeline on the CPU"
    )
    return (
        f"{label}: {seconds:.3f} s per forward ({seconds / len(images):.3f} s per sample; first call {first}); "
        f"profiled forward wall {wall:.3f} s, {kernels}\n  split, synchronised at each range ({synchronised:.3f} s "
        f"in all; the language model without the capture and the V_top hook): " + ", ".join(parts)
        + f", rest {rest:.3f} s"
    )


def gib(value):
    return "n/a" if value is None else f"{value / 2**30:.2f}"


def print_extraction_table(title: str, rows: dict):
    t_ref, _, act_ref, _ = rows[REFERENCE]
    print(f"\n{title}")
    columns = ["method", "s / sample", "samples / s", "peak GiB", "activation GiB", "speed-up", "activation ratio",
               "first call s"]
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for name, (seconds, peak, act, first) in rows.items():
        ratio = "n/a" if act is None or act_ref is None or act <= 0 else f"{act_ref / act:.1f}x less"
        cells = [name, f"{seconds:.3f}", f"{1 / seconds:.2f}", gib(peak), gib(act), f"{t_ref / seconds:.2f}x", ratio]
        cells.append("n/a" if first is None else f"{first:.1f}")
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
    parser.add_argument("--methods", nargs="+", choices=list(TRAJECTORY_METHODS), default=["attention"],
                        help="trajectory methods ours extracts (attention among them: the reference's trajectory)")
    parser.add_argument("--compile-teacher", choices=["true", "false"], default=None,
                        help="also time ours with the teacher's blocks compiled in place, as lavit extract "
                        "--compile_teacher (default: true on CUDA, false on the CPU, where inductor takes minutes)")
    parser.add_argument("--profile", action="store_true", help="profile one batched forward of each variant instead "
                        "of the tables")
    parser.add_argument("--profile-batch", type=int, default=None,
                        help="samples in the profiled forward (default: the largest of --batch-sizes)")
    return parser


def main(args: argparse.Namespace) -> None:
    cuda = args.device.startswith("cuda")
    args.tokens = args.tokens or (2000 if cuda else 1000)
    args.repeats = args.repeats or (3 if cuda else 1)
    args.gen_batch = args.gen_batch or (8 if cuda else 4)
    args.gen_tokens = args.gen_tokens or (128 if cuda else 16)
    args.compile_teacher = cuda if args.compile_teacher is None else args.compile_teacher == "true"
    if any(size < 1 for size in args.batch_sizes):
        raise SystemExit("--batch-sizes must be positive.")
    if "attention" not in args.methods:
        raise SystemExit("--methods must include attention, the reference's trajectory.")
    start = time.perf_counter()
    side = image_side_for(args.tokens, args.response_tokens + 40)
    model, processor = build_teacher(args.shape, args.device, side, args.family)
    images = [Image.effect_noise((side, side), 48 + i).convert("RGB") for i in range(max(args.batch_sizes))]
    response = response_text(processor, args.response_tokens)
    meter = Meter(args.device)
    print(f"teacher built in {time.perf_counter() - start:.0f} s")
    if args.profile:
        profile(args, model, processor, images, response)
        print(f"(total {time.perf_counter() - start:.0f} s)")
        return

    def report(info, rows):
        print(f"\nshape {args.shape}, device {args.device}, {info['tokens']} tokens ({info['image_tokens']} image, "
              f"{info['response_tokens']} response), weights {info['weights_gib']:.2f} GiB, layers "
              f"{info['layers']}, {len(images)} samples per row")
        for name, (traj, vtop) in info["diffs"].items():
            print(f"{name}: max |trajectory diff| {traj:.2e}, max |V_top diff| / max |V_top| {vtop:.2e}")
        print_extraction_table(f"Trajectories ({', '.join(args.methods)}) + V_top", rows)
        print(f"(at {time.perf_counter() - start:.0f} s)")

    bench_extraction(args, model, processor, images, response, meter, report)
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
