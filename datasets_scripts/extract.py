"""`lavit extract`: run a teacher (a supported image-text-to-text family) over a question-answer source into a LaViT
dataset.

Each sample gets the teacher's own response, V_top and the trajectories of docs/method.md section 1; the output is a
`datasets` dataset (parquet shards with explicit features, a card and a manifest) that `load_dataset(OUT)` reads.
Reruns resume (finished samples are skipped); `--num_shards/--shard_index` or `accelerate launch` split the work,
and `--merge` joins the shards. A bad record (in no accepted format, an empty field, a reserved token, a missing or
unreadable image, a bad box, too long for the teacher) is listed in `failures.jsonl` with its index, id and reason,
and the run goes on; `--strict` stops at the first one instead.

Examples:
    lavit make-tiny --kind teacher --out /tmp/teacher
    lavit extract --source viscot_363k.json --image_root /data/viscot/images --teacher /tmp/teacher \\
        --output_dir /tmp/lavit-data --methods attention gradient --limit 100

    # two processes, then merge
    lavit extract ... --output_dir /tmp/out --num_shards 2 --shard_index 0
    lavit extract ... --output_dir /tmp/out --num_shards 2 --shard_index 1
    lavit extract --merge /tmp/out --output_dir /tmp/out --push_to_hub me/lavit-data

    # or: accelerate launch -m datasets_scripts.extract ...   (one shard per process, merged by the main process)

    # options from a YAML file whose keys are these option names (flags given on the command line win)
    lavit extract --config extract.yaml --limit 10

Flags are spelt with underscores, as in `lavit train`; the dashed spelling (`--output-dir`) works too.
"""

import argparse
import dataclasses
import errno
import logging
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from PIL import Image
from tqdm.auto import tqdm

from lavit_hf import schema
from lavit_hf.attention import use_packed_vision_attention
from lavit_hf.grids import BBOX_FRAMES, box_mass
from lavit_hf.layout import check_text, pixel_limits, render_prompt, reserved_tokens
from lavit_hf.patch_embedding import use_linear_patch_embedding

from .card import write_card, write_manifest
from .sources import (
    IMAGE_ERRORS,
    ColumnNames,
    RecordFormatError,
    SourceRecord,
    box_in_frame,
    image_bytes,
    load_image,
    read_source,
)
from .teacher import (
    GENERATION_CACHES,
    STEP_SPLITS,
    TEACHER_FAMILIES,
    TRAJECTORY_METHODS,
    ExtractionSettings,
    GenerationSettings,
    TeacherError,
    TeacherExtractor,
    TeacherOutput,
    teacher_family,
)
from .writer import (
    FAILURES_FILE,
    FILTERED_FILE,
    FolderLock,
    ShardWriter,
    check_shards,
    chunk_order,
    locked_for_merge,
    merge_jsonl,
    naming_path,
    shard_folder,
    write_final,
)


logger = logging.getLogger(__name__)

PUSHED_FILES = ["data/*", "README.md", "manifest.json", FAILURES_FILE, FILTERED_FILE]
# The student adds <lvr1> ... <lvrK> as special tokens, with K chosen only at training time: user text holding any of
# them would move the training layout's landmarks, although the teacher's tokenizer does not know them.
LATENT_TOKEN = re.compile(r"<lvr\d+>")


class ExtractionFailure(RuntimeError):
    """A bad record under `--strict`, or a run that wrote no sample."""


# Options -------------------------------------------------------------------------------------------------------------


@dataclass
class SourceArguments:
    """Where the question-answer records come from."""

    _argument_group_name = "source"

    source: str | None = field(
        default=None,
        metadata={"help": "Visual-CoT .json/.jsonl, a plain .jsonl/.json with image/question/answer, a save_to_disk "
                  "folder or a local dataset load_dataset reads."},
    )
    image_root: str | None = field(
        default=None, metadata={"help": "Folder that relative image paths are resolved against."}
    )
    source_name: str | None = field(
        default=None,
        metadata={"help": "`source` of records without a `dataset` field (default: the file or folder name)."},
    )
    split: str = field(default="train", metadata={"help": "Split read when the source goes through load_dataset."})
    image_column: str = field(default="image", metadata={"help": "Image column of a plain source."})
    question_column: str = field(default="question", metadata={"help": "Question column of a plain source."})
    answer_column: str = field(default="answer", metadata={"help": "Answer column of a plain source."})
    question_id_column: str = field(
        default="question_id", metadata={"help": "Id column of a plain source (default: the record's index)."}
    )
    limit: int | None = field(default=None, metadata={"help": "Only the first N records of the source."})

    def __post_init__(self):
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"--limit must be >= 0, got {self.limit}.")

    def columns(self) -> ColumnNames:
        return ColumnNames(self.image_column, self.question_column, self.answer_column, self.question_id_column)


@dataclass
class TeacherArguments:
    """The teacher checkpoint and how it runs."""

    _argument_group_name = "teacher"

    teacher: str | None = field(
        default=None, metadata={
            "help": "Local checkpoint folder (model and processor) of a supported teacher family: "
            f"{', '.join(TEACHER_FAMILIES)}."
        }
    )
    device: str | None = field(
        default=None,
        metadata={"help": "Torch device (default: cuda if available, else cpu; the process's GPU under accelerate "
                  "launch)."},
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "Teacher weights dtype (auto: bfloat16 on GPU, float32 on CPU).",
                  "choices": ["auto", "float32", "bfloat16", "float16"]},
    )
    min_pixels: int | None = field(default=None, metadata={"help": "Override the processor's smallest image area."})
    max_pixels: int | None = field(default=None, metadata={"help": "Override the processor's largest image area."})
    max_length: int | None = field(
        default=None,
        metadata={"help": "Longest sample, in tokens (image, question and response): a longer one is skipped and "
                  "listed in failures.jsonl (default: the teacher's max_position_embeddings)."},
    )
    compile_teacher: bool | None = field(
        default=None,
        metadata={"help": "Compile each decoder layer and vision block of the teacher in place for the extraction "
                  "forward (torch.compile, as `lavit train` compiles the student): the same values up to kernel "
                  "rounding, faster; each new batch shape compiles once, and generation stays eager unless "
                  "--generation_cache compiled (default: on for a CUDA device, off otherwise)."},
    )

    def __post_init__(self):
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"--max_length must be positive, got {self.max_length}.")


@dataclass
class GenerationArguments:
    """The teacher's response (docs/method.md section 1: greedy, repetition penalty 1.05); defaults from
    `GenerationSettings`."""

    _argument_group_name = "teacher response"

    response_from: str = field(
        default="teacher",
        metadata={"help": "teacher: the teacher's own response (generated); answer: the record's reference answer, "
                  "teacher-forced as the response (no generation).", "choices": ["teacher", "answer"]},
    )
    max_new_tokens: int = field(
        default=GenerationSettings.max_new_tokens, metadata={"help": "Longest teacher response."}
    )
    do_sample: bool = field(
        default=GenerationSettings.do_sample, metadata={"help": "Sample instead of greedy decoding."}
    )
    repetition_penalty: float = field(
        default=GenerationSettings.repetition_penalty, metadata={"help": "Generation repetition penalty."}
    )
    temperature: float = field(
        default=GenerationSettings.temperature, metadata={"help": "Sampling temperature (with --do_sample)."}
    )
    top_p: float = field(default=GenerationSettings.top_p, metadata={"help": "Nucleus sampling (with --do_sample)."})
    generation_batch_size: int = field(
        default=GenerationSettings.batch_size, metadata={"help": "Prompts generated together."}
    )
    generation_cache: str = field(
        default=GenerationSettings.cache,
        metadata={"help": "Key-value cache of the teacher's generation: dynamic (grown token by token), static "
                  "(preallocated) or compiled (static, each decoding step compiled by torch.compile).",
                  "choices": GENERATION_CACHES},
    )
    seed: int = field(default=0, metadata={"help": "Seed (sampling only)."})

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.generation_batch_size < 1:
            raise ValueError("--max_new_tokens and --generation_batch_size must be positive.")

    def settings(self) -> GenerationSettings:
        return GenerationSettings(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            repetition_penalty=self.repetition_penalty,
            temperature=self.temperature,
            top_p=self.top_p,
            batch_size=self.generation_batch_size,
            cache=self.generation_cache,
        )


@dataclass
class ExtractionArguments:
    """What is extracted from each sample, and the box filter (docs/method.md section 5); defaults from
    `ExtractionSettings`."""

    _argument_group_name = "extraction"

    methods: list[str] = field(
        default_factory=lambda: list(ExtractionSettings.methods),
        metadata={"help": "Trajectory methods.", "choices": TRAJECTORY_METHODS},
    )
    attention_layers: list[int] | None = field(
        default=ExtractionSettings.attention_layers,
        metadata={"help": "Teacher layers the attention method averages (negative: from the end; default: the last "
                  "8, or all of a shallower teacher)."},
    )
    gradient_temperature: float | None = field(
        default=ExtractionSettings.gradient_temperature,
        metadata={"help": "Softmax temperature applied to each token's max-normalised gradient magnitudes (default: "
                  "none, divide by their sum)."},
    )
    gradient_batch_size: int = field(
        default=ExtractionSettings.gradient_batch_size,
        metadata={"help": "Per-token gradients per batched backward."},
    )
    extraction_batch_size: int = field(
        default=4,
        metadata={"help": "Samples per teacher forward (right-padded, those of similar length together; 1: one sample "
                  "per forward). The values equal one sample per forward up to float rounding; a batch that fails is "
                  "redone one sample at a time. A restart may change it (lower it after running out of memory)."},
    )
    token_features: bool = field(
        default=ExtractionSettings.token_features,
        metadata={"help": "Also store V_top per image token ([N, D] float16; large: 7 MB a sample at 1,024 x 3,584)."},
    )
    split_steps: str = field(
        default=ExtractionSettings.split_steps,
        metadata={"help": "Split the response into steps, each with its own trajectory.", "choices": STEP_SPLITS},
    )
    min_box_mass: float | None = field(
        default=None,
        metadata={"help": "Keep only samples whose trajectory puts at least this share of its mass inside the "
                  "Visual-CoT box (e.g. 0.1); samples with no box are kept."},
    )
    box_filter_method: str = field(
        default="attention",
        metadata={"help": "Trajectory the box filter reads.", "choices": TRAJECTORY_METHODS},
    )
    bbox_frame: str = field(
        default="square-center",
        metadata={"help": "What normalised boxes are normalised to: the image padded to a centred square "
                  "(Visual-CoT), a top-left square, or the image. Pixel boxes (a coordinate above 1) are converted "
                  "to this frame.", "choices": BBOX_FRAMES},
    )

    def __post_init__(self):
        if self.extraction_batch_size < 1:
            raise ValueError(f"--extraction_batch_size must be positive, got {self.extraction_batch_size}.")
        if self.min_box_mass is not None and self.box_filter_method not in self.methods:
            raise ValueError(f"--box_filter_method {self.box_filter_method} is not among --methods {self.methods}.")

    def settings(self) -> ExtractionSettings:
        return ExtractionSettings(
            methods=tuple(self.methods),
            attention_layers=None if self.attention_layers is None else list(self.attention_layers),
            gradient_temperature=self.gradient_temperature,
            gradient_batch_size=self.gradient_batch_size,
            token_features=self.token_features,
            split_steps=self.split_steps,
        )


@dataclass
class OutputArguments:
    """The output folder, resumable chunks, sharding and the Hub."""

    _argument_group_name = "output"

    output_dir: str | None = field(
        default=None, metadata={"help": "Output folder (resumes when it holds a previous run)."}
    )
    chunk_size: int = field(default=64, metadata={"help": "Finished samples per resumable chunk file."})
    rows_per_file: int = field(default=2000, metadata={"help": "Rows per final parquet file."})
    strict: bool = field(
        default=False, metadata={"help": "Stop at the first bad record instead of listing it in failures.jsonl."}
    )
    retry_failed: bool = field(
        default=False, metadata={"help": "Rerun samples recorded as failed by a previous run."}
    )
    pretty_name: str | None = field(default=None, metadata={"help": "Dataset name in the card."})
    license: str | None = field(default=None, metadata={"help": "License in the card's metadata."})
    num_shards: int | None = field(
        default=None,
        metadata={"help": "Split the source into N contiguous shards (default: 1, or the number of processes under "
                  "accelerate launch)."},
    )
    shard_index: int | None = field(default=None, metadata={"help": "The shard this process extracts."})
    merge: list[str] | None = field(
        default=None,
        metadata={"help": "Merge the shards found under these output folders into --output_dir, then stop.",
                  "metavar": "DIR"},
    )
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Publish the dataset and its card to this Hub repository.", "metavar": "REPO"}
    )
    private: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})

    def __post_init__(self):
        if self.chunk_size < 1 or self.rows_per_file < 1:
            raise ValueError("--chunk_size and --rows_per_file must be positive.")


ARGUMENT_CLASSES = (SourceArguments, TeacherArguments, GenerationArguments, ExtractionArguments, OutputArguments)


@dataclass
class ExtractOptions:
    """Every option of `lavit extract`, by group."""

    data: SourceArguments = field(default_factory=SourceArguments)
    model: TeacherArguments = field(default_factory=TeacherArguments)
    generation: GenerationArguments = field(default_factory=GenerationArguments)
    extraction: ExtractionArguments = field(default_factory=ExtractionArguments)
    output: OutputArguments = field(default_factory=OutputArguments)

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> "ExtractOptions":
        """The options from what `make_parser().parse_args` (or `parse_with_config`) returns."""
        values = {key: value for key, value in vars(namespace).items() if key != "config"}
        groups = {f.name: f.type for f in dataclasses.fields(cls)}
        names = {f.name for group in groups.values() for f in dataclasses.fields(group)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown lavit extract options {unknown}.")
        return cls(**{
            name: group(**{f.name: values[f.name] for f in dataclasses.fields(group) if f.name in values})
            for name, group in groups.items()
        })

    def groups(self) -> list[Any]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    def check(self) -> None:
        """The options a run needs: `--output_dir`, and `--source` with `--teacher` unless it merges."""
        if not self.output.output_dir:
            raise SystemExit("lavit extract: --output_dir is required.")
        if self.output.merge is None and not (self.data.source and self.model.teacher):
            raise SystemExit("lavit extract: --source and --teacher are required (or --merge DIR...).")


def make_parser():
    """The `HfArgumentParser` of the option dataclasses (one argument group each)."""
    from transformers import HfArgumentParser

    formatter = argparse.RawDescriptionHelpFormatter
    return HfArgumentParser(ARGUMENT_CLASSES, prog="lavit extract", description=__doc__, formatter_class=formatter)


def command_line(options: ExtractOptions) -> str:
    """The `lavit extract` command that reproduces the run (non-default options only)."""
    parts = ["lavit", "extract"]
    for group in options.groups():
        default = type(group)()
        for f in dataclasses.fields(group):
            value = getattr(group, f.name)
            if f.name == "merge" or value == getattr(default, f.name):
                continue
            flag = f"--{f.name}"
            if value is True and getattr(default, f.name) is False:  # a switch; a `bool | None` option takes a value
                parts.append(flag)
            elif isinstance(value, (list, tuple)):
                parts += [flag, *map(str, value)]
            else:
                parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


# Output folder -------------------------------------------------------------------------------------------------------


def check_output_folder(out: Path) -> None:
    """Refuse an output folder that cannot be created or written, before any work starts."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as error:
        reason = f"the output folder cannot be written ({error.strerror or error})"
        raise OSError(error.errno, reason, str(out)) from error


def _image_file_bytes(record: SourceRecord) -> int:
    if record.image_path is not None:
        try:
            return os.stat(record.image_path).st_size
        except OSError:
            return 0  # a missing image is the record's failure, found later
    if isinstance(record.image, dict) and record.image.get("bytes"):
        return len(record.image["bytes"])
    return 0


def check_free_space(out: Path, records: list[SourceRecord], feature_bytes_per_row: int) -> int:
    """Refuse to start when the dataset cannot fit: its images (stored as they are) and a lower bound of its teacher
    features must fit in the free space of `out`'s file system. Returns that lower bound in bytes."""
    needed = sum(_image_file_bytes(record) + feature_bytes_per_row for record in records if record.error is None)
    free = shutil.disk_usage(out).free
    if needed > free:
        raise OSError(
            errno.ENOSPC,
            f"the dataset needs at least {_size(needed)} (images and teacher features of {len(records)} records) but "
            f"its file system has {_size(free)} free; free some space or choose another --output_dir",
            str(out),
        )
    logger.info("%s: %s free; the dataset needs at least %s", out, _size(free), _size(needed))
    return needed


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.2f} MB"


def min_feature_bytes(hidden_size: int, min_image_tokens: int, extraction: ExtractionArguments) -> int:
    """A lower bound of one row's teacher features: V_top (float32), each method's trajectory for the response and at
    least one step (float32), and with `--token_features` the token-wise V_top (float16)."""
    per_row = 4 * hidden_size + 2 * 4 * min_image_tokens * len(extraction.methods)
    if extraction.token_features:
        per_row += 2 * hidden_size * min_image_tokens
    return per_row


# Teacher -------------------------------------------------------------------------------------------------------------


def image_tokens(processor, height: int, width: int) -> int:
    """The image tokens the teacher's processor gives an image of this size, without preprocessing it (the count
    processors report to serving engines: Qwen's grid rule, Gemma 3's fixed count)."""
    return int(processor._get_num_multimodal_tokens(image_sizes=[(height, width)]).num_image_tokens[0])


def load_teacher_processor(path: str, min_pixels: int | None = None, max_pixels: int | None = None):
    """The teacher's processor, with optional pixel-limit overrides (dynamic-resolution families only)."""
    from transformers import AutoConfig, AutoProcessor

    # Refuses, by name and with the reason, a family without one known image-token grid before loading any weight.
    family = teacher_family(AutoConfig.from_pretrained(path).model_type)
    if (min_pixels is not None or max_pixels is not None) and not family.dynamic_resolution:
        raise ValueError(f"{path}: a {family.name} teacher resizes every image to one size; --min-pixels and "
                         "--max-pixels do not apply.")
    processor = AutoProcessor.from_pretrained(path)
    size = dict(processor.image_processor.size.items()) if hasattr(processor.image_processor.size, "items") else {}
    if min_pixels is not None or max_pixels is not None:
        size = {
            "shortest_edge": min_pixels or size.get("shortest_edge"),
            "longest_edge": max_pixels or size.get("longest_edge"),
        }
        processor = AutoProcessor.from_pretrained(path, size=size)
    return processor


def load_teacher(path: str, device: str, dtype: str = "auto"):
    """A local checkpoint of a supported teacher family under `sdpa`, on `device`."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    family = teacher_family(AutoConfig.from_pretrained(path).model_type)
    if dtype == "auto":
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype), attn_implementation="sdpa")
    if family.packed_vision:
        # Speed only: the vision tower's windows in one sdpa call per layer instead of a Python loop over windows.
        use_packed_vision_attention(model)
    if str(device).startswith("cuda"):
        # Speed only: the patch embedding's Conv3d as one GEMM (cuDNN runs the convolution far slower).
        use_linear_patch_embedding(model)
    return model.to(device)


# Sharding ------------------------------------------------------------------------------------------------------------


def resolve_sharding(output: OutputArguments, device: str | None):
    """`(num_shards, shard_index, device, accelerate_state)`; under `accelerate launch` one shard per process."""
    state = None
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if output.num_shards is None and world_size > 1:
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        # accelerate only sets up a CPU process group (gloo) when asked for the CPU: without `cpu=True` a launch on a
        # machine with no accelerator resolves to one process, and every process would write shard 0 of 1.
        cpu = (
            str(device or "").startswith("cpu")
            or parse_flag_from_env("ACCELERATE_USE_CPU")
            or not torch.accelerator.is_available()
        )
        state = PartialState(cpu=cpu)
        if state.num_processes != world_size:
            raise RuntimeError(f"WORLD_SIZE is {world_size} but accelerate set up {state.num_processes} process(es).")
        return state.num_processes, state.process_index, str(state.device), state
    num_shards = output.num_shards or 1
    shard_index = output.shard_index if output.shard_index is not None else 0
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard_index {shard_index} is not in [0, {num_shards}).")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return num_shards, shard_index, device, state


def shard_slice(n_records: int, num_shards: int, shard_index: int) -> slice:
    """Contiguous, deterministic shards (sizes differ by at most one)."""
    base, extra = divmod(n_records, num_shards)
    start = shard_index * base + min(shard_index, extra)
    return slice(start, start + base + (shard_index < extra))


# Rows ----------------------------------------------------------------------------------------------------------------


def build_row(record: SourceRecord, image_size: tuple[int, int], out: TeacherOutput, settings: ExtractionSettings):
    """One dataset row (plus its source index) in the column contract of `schema.lavit_features`."""
    row = {
        schema.ID: record.key,
        schema.QUESTION_ID: record.question_id,
        schema.SOURCE: record.source,
        schema.IMAGE: image_bytes(record),
        schema.IMAGE_SIZE: list(image_size),
        schema.QUESTION: record.question,
        schema.ANSWER: record.answer,
        schema.BBOX: record.bbox,
        schema.TEACHER_RESPONSE: out.response,
        schema.TEACHER_RESPONSE_STEPS: out.steps,
        schema.TEACHER_FAMILY: out.family,
        schema.TEACHER_GRID: list(out.grid),
        schema.VTOP: out.vtop_tokens.mean(0).tolist(),
        schema.TRAJECTORY_LAYERS: out.layers if "attention" in settings.methods else [],
        schema.TRAJECTORY_SPAN: list(out.span),
        "_index": record.index,
    }
    if settings.token_features:
        row[schema.VTOP_TOKENS] = out.vtop_tokens.half().numpy()
    for method in settings.methods:
        row[schema.trajectory_column(method)] = out.trajectories[method].tolist()
        row[schema.trajectory_steps_column(method)] = out.step_trajectories[method].tolist()
    return row


@dataclass
class Counts:
    """What a run did; logged at the end."""

    written: int = 0
    skipped: int = 0
    failed: int = 0
    filtered: int = 0
    pixel_boxes: int = 0
    batches_redone: int = 0
    reasons: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items())) or "none"
        return (f"written {self.written}, skipped as done {self.skipped}, failed {self.failed} ({reasons}), "
                f"filtered {self.filtered}, pixel boxes normalised {self.pixel_boxes}, extraction batches redone one "
                f"sample at a time {self.batches_redone}")


@dataclass
class ValidSample:
    """A record that passed every check before the teacher runs, with its image and prompt length."""

    record: SourceRecord
    image: Any
    prompt_length: int


class ShardRun:
    """Extracts one shard: validation, batched generation, batched extraction, filter, resumable writing.

    Records are read in blocks cut at fixed positions of the shard: generation batches of `--generation_batch_size`,
    then extraction batches of `--extraction_batch_size` samples of similar length; rows and failures are written in
    source order as soon as every earlier sample of the block is done. Per-sample problems (bad records, and what the
    teacher refuses: `TeacherError`, `ValueError`) are failures; an extraction batch that fails is redone one sample
    at a time, so only the failing sample is lost. Any other error (CUDA out of memory among them) stops the run, which
    the next run resumes.
    """

    def __init__(self, extractor: TeacherExtractor, writer: ShardWriter, options: ExtractOptions, max_length: int):
        self.extractor = extractor
        self.writer = writer
        self.options = options
        self.max_length = max_length
        self.reserved = reserved_tokens(extractor.processor.tokenizer)
        self.counts = Counts()
        self._expansion_offset: int | None = None

    def run(self, records: list[SourceRecord]) -> Counts:
        done = self.writer.done_keys()
        done_keys = set().union(*done.values())
        todo = [r for r in records if r.key not in done_keys]
        self.counts.skipped = len(records) - len(todo)
        if self.counts.skipped:
            logger.info("Resuming: %d of %d samples already done (%s)", self.counts.skipped, len(records),
                        {k: len(v) for k, v in done.items()})
        generation_size = self.options.generation.generation_batch_size
        # A block holds whole generation batches and at least one extraction batch.
        block = generation_size * math.ceil(self.options.extraction.extraction_batch_size / generation_size)
        with tqdm(total=len(todo), unit="sample", desc="extract", dynamic_ncols=True) as bar:
            # Batches are cut at fixed positions of the shard, so a resumed run batches the rest as before.
            for start in range(0, len(records), block):
                ready, count = [], 0
                for first in range(start, min(start + block, len(records)), generation_size):
                    batch = [r for r in records[first : first + generation_size] if r.key not in done_keys]
                    if batch:
                        ready += self._respond(batch, first)
                        count += len(batch)
                self._extract(ready)
                bar.update(count)
        return self.counts

    def _fail(self, record: SourceRecord, reason: str, detail: str) -> None:
        where = f"record {record.index} (question_id={record.question_id!r})"
        detail = detail.removeprefix(f"{where}: ")
        message = f"{where}: {reason}: {detail}"
        if self.options.output.strict:
            raise ExtractionFailure(message)
        logger.warning(message)
        entry = {"key": record.key, "index": record.index, "question_id": record.question_id, "reason": reason}
        self.writer.record(FAILURES_FILE, {**entry, "detail": detail})
        self.counts.failed += 1
        self.counts.reasons[reason] += 1

    def _validate(self, record: SourceRecord) -> ValidSample | None:
        if record.error is not None:
            return self._fail(record, "malformed record", record.error)
        if not record.question:
            return self._fail(record, "empty question", "the question is empty")
        if not record.answer:
            return self._fail(record, "no answer", "the record has no answer")
        where = f"record {record.index} (question_id={record.question_id!r})"
        tokenizer = self.extractor.processor.tokenizer
        for name, text in (("question", record.question), ("answer", record.answer)):
            try:
                check_text(text, tokenizer, where, name, [*LATENT_TOKEN.findall(text), *self.reserved])
            except ValueError as error:
                return self._fail(record, "reserved token", str(error))
        try:
            image = load_image(record)
        except FileNotFoundError as error:
            return self._fail(record, "missing image", str(error))
        except IMAGE_ERRORS as error:
            return self._fail(record, "unreadable image", f"{record.image_path or 'in-memory image'}: {error}")
        if record.bbox:
            try:
                frame = self.options.extraction.bbox_frame
                record.bbox, in_pixels = box_in_frame(record.bbox, image.size, frame, where)
            except RecordFormatError as error:
                return self._fail(record, "bad box", str(error))
            self.counts.pixel_boxes += in_pixels
        try:
            prompt_length = self._prompt_length(image, record.question)
        except ValueError as error:
            return self._fail(record, "unusable image", f"the processor refuses the {image.size} image: {error}")
        if prompt_length >= self.max_length:
            detail = f"the prompt (image and question) is {prompt_length} tokens, leaving no room for a response"
            return self._fail(record, "too long", f"{detail} within max_length {self.max_length}")
        return ValidSample(record, image, prompt_length)

    def _prompt_length(self, image, question: str) -> int:
        """The prompt's length in tokens, from the image size alone (no image preprocessing): the rendered prompt's
        text tokens, plus the image's tokens, plus what the processor's expansion of the placeholder adds around them
        (measured once per run on a blank image: -1 for Qwen's one placeholder, boundary tokens for Gemma 3)."""
        processor = self.extractor.processor
        text_tokens = processor.tokenizer(render_prompt(processor, question), add_special_tokens=False)["input_ids"]
        if self._expansion_offset is None:
            blank = Image.new("RGB", (image.width, image.height))
            expanded = processor(text=[render_prompt(processor, question)], images=[blank])["input_ids"][0]
            blank_tokens = image_tokens(processor, blank.height, blank.width)
            self._expansion_offset = len(expanded) - len(text_tokens) - blank_tokens
        return len(text_tokens) + image_tokens(processor, image.height, image.width) + self._expansion_offset

    def _generate(self, samples: list[ValidSample], start: int) -> list[str | None]:
        torch.manual_seed(self.options.generation.seed + start)
        try:
            return self.extractor.generate([s.image for s in samples], [s.record.question for s in samples])
        except (TeacherError, ValueError) as error:
            if len(samples) == 1:
                self._fail(samples[0].record, "teacher failure", f"generation: {error}")
                return [None]
            logger.warning("Batched generation failed (%s); generating one at a time", error)
            return [self._generate([sample], start)[0] for sample in samples]

    def _respond(self, batch: list[SourceRecord], start: int) -> list[tuple[ValidSample, str]]:
        """The valid samples of a generation batch with their responses (failures recorded)."""
        valid = [sample for record in batch if (sample := self._validate(record)) is not None]
        if not valid:
            return []
        if self.options.generation.response_from == "answer":
            responses = [sample.record.answer for sample in valid]
        else:
            responses = self._generate(valid, start)
        return [(sample, response) for sample, response in zip(valid, responses, strict=True) if response is not None]

    def _extract(self, ready: list[tuple[ValidSample, str]]) -> None:
        """Extract a block's samples in batches of similar length; write each row (or failure) in source order as soon
        as the samples before it are done."""
        tokenizer = self.extractor.processor.tokenizer
        lengths = [
            sample.prompt_length + len(tokenizer(response, add_special_tokens=False)["input_ids"])
            for sample, response in ready
        ]
        # Shortest first: samples of similar length share a batch, with little padding.
        fitting = sorted((i for i, length in enumerate(lengths) if length <= self.max_length), key=lengths.__getitem__)
        outcomes: dict[int, TeacherOutput | Exception] = {}
        size = self.options.extraction.extraction_batch_size
        emitted = self._emit(ready, lengths, outcomes, 0)
        groups = [fitting[first : first + size] for first in range(0, len(fitting), size)]
        # Each batch is encoded (the processor, on the CPU) while the teacher runs the one before.
        results = self.extractor.extract_batches(_batch_inputs([ready[i] for i in group]) for group in groups)
        for group, result in zip(groups, results, strict=True):
            outcomes.update(zip(group, self._group_outcomes([ready[i] for i in group], result), strict=True))
            emitted = self._emit(ready, lengths, outcomes, emitted)

    def _group_outcomes(
        self, group: list[tuple[ValidSample, str]], result: list[TeacherOutput] | Exception
    ) -> list[TeacherOutput | Exception]:
        """Each sample's output, or the error it failed with; a batch that failed is redone one sample at a time."""
        if not isinstance(result, Exception):
            return result
        if len(group) == 1:
            return [result]
        indices = [sample.record.index for sample, _ in group]
        logger.warning("Extracting records %s in one batch failed (%s); extracting them one at a time", indices, result)
        self.counts.batches_redone += 1
        return [self._extract_one(item) for item in group]

    def _extract_one(self, item: tuple[ValidSample, str]) -> TeacherOutput | Exception:
        try:
            return self.extractor.extract_batch(*_batch_inputs([item]))[0]
        except (TeacherError, ValueError) as error:
            return error

    def _emit(
        self,
        ready: list[tuple[ValidSample, str]],
        lengths: list[int],
        outcomes: dict[int, TeacherOutput | Exception],
        first: int,
    ) -> int:
        """Write rows and failures from `ready[first]` on, in source order, up to the first sample not yet extracted;
        returns its index."""
        for i in range(first, len(ready)):
            (sample, _), length = ready[i], lengths[i]
            record = sample.record
            if length > self.max_length:
                prompt = sample.prompt_length
                detail = f"the prompt and the response are {length} tokens ({prompt} + {length - prompt})"
                self._fail(record, "too long", f"{detail}, over max_length {self.max_length}")
            elif i not in outcomes:
                return i
            elif isinstance(outcome := outcomes.pop(i), Exception):
                self._fail(record, "teacher failure", str(outcome))
            elif not self._filtered_out(record, sample.image.size, outcome):
                self.writer.add(build_row(record, sample.image.size, outcome, self.extractor.settings))
                self.counts.written += 1
        return len(ready)

    def _filtered_out(self, record: SourceRecord, image_size: tuple[int, int], out: TeacherOutput) -> bool:
        extraction = self.options.extraction
        if extraction.min_box_mass is None or not record.bbox:
            return False
        traj = out.trajectories[extraction.box_filter_method]
        mass = box_mass(traj, out.grid, image_size, record.bbox, extraction.bbox_frame)
        if mass >= extraction.min_box_mass:
            return False
        entry = {"key": record.key, "index": record.index, "question_id": record.question_id, "box_mass": mass}
        self.writer.record(FILTERED_FILE, entry)
        self.counts.filtered += 1
        return True


def _batch_inputs(group: list[tuple[ValidSample, str]]) -> tuple[list[Image.Image], list[str], list[str]]:
    """`(images, questions, responses)` of a batch, as `TeacherExtractor.extract_batch` takes them."""
    return [sample.image for sample, _ in group], [sample.record.question for sample, _ in group], [r for _, r in group]


# Run info, finalisation, push ----------------------------------------------------------------------------------------


def run_info(
    options: ExtractOptions,
    extractor: TeacherExtractor,
    features: datasets.Features,
    max_length: int,
    n_records: int,
    shard: tuple[int, int],
    n_shard: int,
) -> dict[str, Any]:
    """Everything that determines the shard's content (a restart must match it) plus card facts."""
    model = extractor.model
    min_pixels, max_pixels = pixel_limits(extractor.processor)
    data, extraction = options.data, options.extraction
    return {
        "source": str(data.source),
        "image_root": data.image_root,
        "source_name": data.source_name,
        "source_columns": [data.image_column, data.question_column, data.answer_column, data.question_id_column],
        "split": data.split,
        "limit": data.limit,
        "source_records": n_records,
        "num_shards": shard[0],
        "shard_index": shard[1],
        "shard_records": n_shard,
        "chunk_size": options.output.chunk_size,
        "teacher": str(Path(options.model.teacher).resolve()),
        "teacher_model_type": model.config.model_type,
        "hidden_size": extractor.hidden_size,
        "num_layers": len(extractor.decoder_layers),
        "layers": extractor.layers,
        "dtype": str(model.dtype).removeprefix("torch."),
        "attn_implementation": model.config._attn_implementation,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "max_length": max_length,
        "extraction": extractor.settings.to_dict(),
        "extraction_batch_size": extraction.extraction_batch_size,
        "response_from": options.generation.response_from,
        "generation": vars(extractor.generation).copy(),
        "seed": options.generation.seed,
        "min_box_mass": extraction.min_box_mass,
        "box_filter_method": extraction.box_filter_method,
        "bbox_frame": extraction.bbox_frame,
        "features": features.to_dict(),
    }


def finalise(inputs: list[Path], out: Path, options: ExtractOptions) -> datasets.Features:
    """Merge finished shards into `out`, chunk by chunk: parquet files, failures, card and manifest."""
    with locked_for_merge(out, inputs) as folders:
        info = check_shards(folders)
        features = datasets.Features.from_dict(info["features"])
        entries = chunk_order(folders)
        failures = merge_jsonl(folders, FAILURES_FILE, out)
        filtered = merge_jsonl(folders, FILTERED_FILE, out)
        counts = {"records": info["source_records"], "written": len(entries), "failed": len(failures),
                  "filtered": len(filtered), "failure_reasons": dict(Counter(f["reason"] for f in failures))}
        if len(entries) + len(failures) + len(filtered) != info["source_records"]:
            raise ValueError(f"{counts}: written + failed + filtered does not cover the source's records.")
        if not entries:
            # An empty dataset would only fail later, in load_dataset, with an arrow error that names nothing.
            raise ExtractionFailure(f"No sample was written: {counts}; the reasons are in {out / FAILURES_FILE}.")
        files = write_final(out, entries, features, options.output.rows_per_file)
        info.update(counts=counts, command=info.get("command") or command_line(options), files=files,
                    pretty_name=options.output.pretty_name or out.resolve().name, license=options.output.license,
                    lavit_version=_version())
        with naming_path(out / "manifest.json", "write the manifest"):
            write_manifest(out, info)
        with naming_path(out / "README.md", "write the dataset card"):
            write_card(out, features, info, repo_id=options.output.push_to_hub or str(out))
    logger.info("Dataset written to %s: %s", out, counts)
    return features


def _version() -> str:
    from lavit_hf import __version__

    return __version__


def push_to_hub(out: Path, repo_id: str, private: bool = False) -> str:
    """Publish the dataset files, card and manifest of `out` to a Hub dataset repository."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(out), allow_patterns=PUSHED_FILES,
                      commit_message="Upload LaViT dataset (lavit extract)")
    logger.info("Pushed %s to %s", out, url)
    return str(url)


# Entry point ---------------------------------------------------------------------------------------------------------


def read_records(options: ExtractOptions) -> list[SourceRecord]:
    """The source's records; refuses a source none of whose records is in an accepted format (wrong columns, wrong
    file) before the teacher loads."""
    data = options.data
    records = read_source(data.source, data.image_root, data.source_name, data.columns(), data.split, data.limit,
                          strict=options.output.strict)
    if records and all(record.error is not None for record in records):
        raise RecordFormatError(
            f"None of the {len(records)} records of {data.source} is in an accepted format; the first: "
            f"{records[0].error}"
        )
    return records


def extract_shard(
    options: ExtractOptions, records: list[SourceRecord], num_shards: int, shard_index: int, device: str
) -> Counts:
    """Extract one shard of `records` into its folder of `--output_dir`; resumes what a previous run left."""
    folder = shard_folder(options.output.output_dir, shard_index, num_shards)
    # Locked before the teacher loads, so that a second run into the folder is refused at once.
    with FolderLock(folder, f"extracting shard {shard_index} of {num_shards}"):
        return _extract_locked_shard(options, records, num_shards, shard_index, device, folder)


def _extract_locked_shard(
    options: ExtractOptions, records: list[SourceRecord], num_shards: int, shard_index: int, device: str, folder: Path
) -> Counts:
    from transformers import AutoConfig

    teacher = options.model.teacher
    shard = records[shard_slice(len(records), num_shards, shard_index)]
    processor = load_teacher_processor(teacher, options.model.min_pixels, options.model.max_pixels)
    text_config = AutoConfig.from_pretrained(teacher).get_text_config()
    side = math.isqrt(pixel_limits(processor)[0])
    min_tokens = max(1, image_tokens(processor, side, side))
    feature_bytes = min_feature_bytes(text_config.hidden_size, min_tokens, options.extraction)
    check_free_space(Path(options.output.output_dir), shard, feature_bytes)

    model = load_teacher(teacher, device, options.model.dtype)
    compile_teacher = options.model.compile_teacher
    if compile_teacher is None:
        compile_teacher = torch.device(device).type == "cuda"
    extractor = TeacherExtractor(
        model, processor, options.extraction.settings(), options.generation.settings(), compile_blocks=compile_teacher
    )
    max_length = options.model.max_length or text_config.max_position_embeddings
    extraction = extractor.settings
    features = schema.lavit_features(extractor.hidden_size, extraction.token_features, extraction.methods)
    info = run_info(options, extractor, features, max_length, len(records), (num_shards, shard_index), len(shard))
    info["command"] = command_line(options)
    with ShardWriter(folder, features, info, options.output.chunk_size, options.output.retry_failed) as writer:
        counts = ShardRun(extractor, writer, options, max_length).run(shard)
    logger.info("Shard %d/%d: %s", shard_index, num_shards, counts.summary())
    return counts


def main(args: argparse.Namespace | ExtractOptions) -> None:
    """Run `lavit extract` with parsed options (`make_parser().parse_args(...)`, or an `ExtractOptions`)."""
    options = args if isinstance(args, ExtractOptions) else ExtractOptions.from_namespace(args)
    options.check()
    out = Path(options.output.output_dir)
    check_output_folder(out)
    if options.output.merge is not None:
        finalise([Path(p) for p in options.output.merge], out, options)
    else:
        num_shards, shard_index, device, state = resolve_sharding(options.output, options.model.device)
        records = read_records(options)
        extract_shard(options, records, num_shards, shard_index, device)
        if state is not None:
            state.wait_for_everyone()
        if state is None and num_shards > 1:
            logger.info("Shard %d of %d done; when all are, run `lavit extract --merge %s --output_dir %s`.",
                        shard_index, num_shards, out, out)
            return
        if state is not None and not state.is_main_process:
            return
        finalise([out], out, options)
    if options.output.push_to_hub:
        push_to_hub(out, options.output.push_to_hub, options.output.private)


if __name__ == "__main__":  # `accelerate launch -m datasets_scripts.extract ...`
    from lavit_hf.arguments import parse_with_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(parse_with_config(make_parser(), sys.argv[1:]))


__all__ = [
    "ExtractOptions",
    "ExtractionArguments",
    "ExtractionFailure",
    "GenerationArguments",
    "OutputArguments",
    "ShardRun",
    "SourceArguments",
    "TeacherArguments",
    "build_row",
    "check_free_space",
    "check_output_folder",
    "command_line",
    "extract_shard",
    "finalise",
    "load_teacher",
    "load_teacher_processor",
    "main",
    "make_parser",
    "push_to_hub",
    "shard_slice",
]
