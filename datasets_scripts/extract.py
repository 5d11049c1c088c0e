"""`lavit extract`: run a Qwen2.5-VL teacher over a question-answer source into a LaViT dataset (project issue 3).

Each sample gets the teacher's own response, V_top and the trajectories of METHOD.md section 1; the output is a
`datasets` dataset (parquet shards with explicit features, a card and a manifest) that `load_dataset(OUT)` reads.
Reruns resume (finished samples are skipped); `--num-shards/--shard-index` or `accelerate launch` split the work,
and `--merge` joins the shards.

Examples:
    lavit make-tiny --kind teacher --out /tmp/teacher
    lavit extract --source viscot_363k.json --image-root /data/viscot/images --teacher /tmp/teacher \\
        --output-dir /tmp/lavit-data --methods attention gradient --limit 100

    # two processes, then merge
    lavit extract ... --output-dir /tmp/out --num-shards 2 --shard-index 0
    lavit extract ... --output-dir /tmp/out --num-shards 2 --shard-index 1
    lavit extract --merge /tmp/out --output-dir /tmp/out --push-to-hub me/lavit-data

    # or: accelerate launch -m datasets_scripts.extract ...   (one shard per process, merged by the main process)
"""

import argparse
import logging
import os
import shlex
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm

from lavit_hf import schema
from lavit_hf.attention import use_packed_vision_attention
from lavit_hf.grids import BBOX_FRAMES, box_mass
from lavit_hf.layout import pixel_limits

from .card import write_card, write_manifest
from .sources import ColumnNames, SourceRecord, image_bytes, load_image, read_source
from .teacher import (
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
    ShardWriter,
    check_shards,
    merge_jsonl,
    merged_table,
    shard_dir_name,
    shard_folders,
    write_final,
)


logger = logging.getLogger(__name__)

PUSHED_FILES = ["data/*", "README.md", "manifest.json", FAILURES_FILE, FILTERED_FILE]


class ExtractionFailure(RuntimeError):
    """A bad record under `--strict`."""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lavit extract", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help="YAML file of option values (keys: option names); flags win")
    src = parser.add_argument_group("source")
    src.add_argument("--source", help="Visual-CoT .json/.jsonl, a plain .jsonl/.json with image/question/answer, a "
                     "save_to_disk folder or a local dataset load_dataset reads")
    src.add_argument("--image-root", default=None, help="folder that relative image paths are resolved against")
    src.add_argument("--source-name", default=None, help="`source` of records without a `dataset` field "
                     "(default: the file or folder name)")
    src.add_argument("--split", default="train", help="split read when the source goes through load_dataset")
    src.add_argument("--image-column", default="image", help="image column of a plain source")
    src.add_argument("--question-column", default="question", help="question column of a plain source")
    src.add_argument("--answer-column", default="answer", help="answer column of a plain source")
    src.add_argument("--question-id-column", default="question_id", help="id column of a plain source (default: "
                     "the record's index)")
    src.add_argument("--limit", type=int, default=None, help="only the first N records of the source")
    teacher = parser.add_argument_group("teacher")
    teacher.add_argument("--teacher", help="local checkpoint folder (model and processor) of a supported teacher "
                         f"family: {', '.join(TEACHER_FAMILIES)}")
    teacher.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu; the "
                         "process's GPU under accelerate launch)")
    teacher.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                         help="teacher weights dtype (auto: bfloat16 on GPU, float32 on CPU)")
    teacher.add_argument("--min-pixels", type=int, default=None, help="override the processor's smallest image area")
    teacher.add_argument("--max-pixels", type=int, default=None, help="override the processor's largest image area")
    gen = parser.add_argument_group("teacher response (METHOD.md section 1: greedy, repetition penalty 1.05)")
    gen.add_argument("--response-from", default="teacher", choices=["teacher", "answer"],
                     help="teacher: the teacher's own response (generated); answer: the record's reference answer, "
                     "teacher-forced as the response (no generation)")
    gen.add_argument("--max-new-tokens", type=int, default=1024, help="longest teacher response")
    gen.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--repetition-penalty", type=float, default=1.05, help="generation repetition penalty")
    gen.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --do-sample)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --do-sample)")
    gen.add_argument("--generation-batch-size", type=int, default=8, help="prompts generated together")
    gen.add_argument("--seed", type=int, default=0, help="seed (sampling only)")
    ext = parser.add_argument_group("extraction")
    ext.add_argument("--methods", nargs="+", default=["attention"], choices=TRAJECTORY_METHODS,
                     help="trajectory methods")
    ext.add_argument("--attention-layers", nargs="+", type=int, default=None,
                     help="teacher layers the attention method averages (negative: from the end; default: the last 8, "
                     "or all of a shallower teacher)")
    ext.add_argument("--gradient-temperature", type=float, default=None, help="softmax temperature applied to each "
                     "token's max-normalised gradient magnitudes (default: none, divide by their sum)")
    ext.add_argument("--gradient-batch-size", type=int, default=32, help="per-token gradients per batched backward")
    ext.add_argument("--token-features", action="store_true", help="also store V_top per image token "
                     "([N, D] float16; large: 7 MB a sample at 1,024 x 3,584)")
    ext.add_argument("--split-steps", default="none", choices=STEP_SPLITS,
                     help="split the response into steps, each with its own trajectory")
    filt = parser.add_argument_group("box filter (METHOD.md section 5)")
    filt.add_argument("--min-box-mass", type=float, default=None, help="keep only samples whose trajectory puts at "
                      "least this share of its mass inside the Visual-CoT box (e.g. 0.1); samples with no box "
                      "are kept")
    filt.add_argument("--box-filter-method", default="attention", choices=TRAJECTORY_METHODS,
                      help="trajectory the box filter reads")
    filt.add_argument("--bbox-frame", default="square-center", choices=BBOX_FRAMES, help="what the box is "
                      "normalised to: the image padded to a centred square (Visual-CoT), a top-left square, or "
                      "the image")
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", required=False, help="output folder (resumes when it holds a previous run)")
    out.add_argument("--chunk-size", type=int, default=64, help="finished samples per resumable chunk file")
    out.add_argument("--rows-per-file", type=int, default=2000, help="rows per final parquet file")
    out.add_argument("--strict", action="store_true", help="stop at the first bad record instead of logging it")
    out.add_argument("--retry-failed", action="store_true", help="rerun samples recorded as failed by a previous run")
    out.add_argument("--pretty-name", default=None, help="dataset name in the card")
    out.add_argument("--license", default=None, help="license in the card's metadata")
    shard = parser.add_argument_group("sharding")
    shard.add_argument("--num-shards", type=int, default=None, help="split the source into N contiguous shards "
                       "(default: 1, or the number of processes under accelerate launch)")
    shard.add_argument("--shard-index", type=int, default=None, help="the shard this process extracts")
    shard.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                       help="merge the shards found under these output folders into --output-dir, then stop")
    hub = parser.add_argument_group("hub")
    hub.add_argument("--push-to-hub", default=None, metavar="REPO", help="publish the dataset and its card")
    hub.add_argument("--private", action="store_true", help="create the Hub repository as private")
    return parser


# Teacher ---------------------------------------------------------------------------------------------------------


def load_teacher(path: str, device: str, dtype: str, min_pixels: int | None, max_pixels: int | None):
    """A local checkpoint of a supported teacher family under `sdpa`, and its processor with optional pixel-limit
    overrides (dynamic-resolution families only)."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

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
    if dtype == "auto":
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype), attn_implementation="sdpa")
    if family.packed_vision:
        # Speed only: the vision tower's windows in one sdpa call per layer instead of a Python loop over windows.
        use_packed_vision_attention(model)
    return model.to(device), processor


# Sharding --------------------------------------------------------------------------------------------------------


def resolve_sharding(args: argparse.Namespace):
    """`(num_shards, shard_index, device, accelerate_state)`; under `accelerate launch` one shard per process."""
    state = None
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if args.num_shards is None and world_size > 1:
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        # accelerate only sets up a CPU process group (gloo) when asked for the CPU: without `cpu=True` a launch on a
        # machine with no accelerator resolves to one process, and every process would write shard 0 of 1.
        cpu = (
            str(args.device or "").startswith("cpu")
            or parse_flag_from_env("ACCELERATE_USE_CPU")
            or not torch.accelerator.is_available()
        )
        state = PartialState(cpu=cpu)
        if state.num_processes != world_size:
            raise RuntimeError(f"WORLD_SIZE is {world_size} but accelerate set up {state.num_processes} process(es).")
        return state.num_processes, state.process_index, str(state.device), state
    num_shards = args.num_shards or 1
    shard_index = args.shard_index if args.shard_index is not None else 0
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard-index {shard_index} is not in [0, {num_shards}).")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return num_shards, shard_index, device, state


def shard_slice(n_records: int, num_shards: int, shard_index: int) -> slice:
    """Contiguous, deterministic shards (sizes differ by at most one)."""
    base, extra = divmod(n_records, num_shards)
    start = shard_index * base + min(shard_index, extra)
    return slice(start, start + base + (shard_index < extra))


# Rows ------------------------------------------------------------------------------------------------------------


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
    reasons: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items())) or "none"
        return (f"written {self.written}, skipped as done {self.skipped}, failed {self.failed} ({reasons}), "
                f"filtered {self.filtered}")


class ShardRun:
    """Extracts one shard: validation, batched generation, per-sample extraction, filter, resumable writing."""

    def __init__(self, extractor: TeacherExtractor, writer: ShardWriter, args: argparse.Namespace):
        self.extractor = extractor
        self.writer = writer
        self.args = args
        self.counts = Counts()

    def run(self, records: list[SourceRecord]) -> Counts:
        done = self.writer.done_keys()
        done_keys = set().union(*done.values())
        todo = [r for r in records if r.key not in done_keys]
        self.counts.skipped = len(records) - len(todo)
        if self.counts.skipped:
            logger.info("Resuming: %d of %d samples already done (%s)", self.counts.skipped, len(records),
                        {k: len(v) for k, v in done.items()})
        size = self.args.generation_batch_size
        with tqdm(total=len(todo), unit="sample", desc="extract", dynamic_ncols=True) as bar:
            # Batches are cut at fixed positions of the shard, so a resumed run batches the rest as before.
            for start in range(0, len(records), size):
                batch = [r for r in records[start : start + size] if r.key not in done_keys]
                if batch:
                    self._batch(batch, start)
                    bar.update(len(batch))
        self.writer.close()
        return self.counts

    def _fail(self, record: SourceRecord, reason: str, detail: str) -> None:
        message = f"record {record.index} (question_id={record.question_id!r}): {reason}: {detail}"
        if self.args.strict:
            raise ExtractionFailure(message)
        logger.warning(message)
        entry = {"key": record.key, "index": record.index, "question_id": record.question_id, "reason": reason}
        self.writer.record(FAILURES_FILE, {**entry, "detail": detail})
        self.counts.failed += 1
        self.counts.reasons[reason] += 1

    def _validate(self, record: SourceRecord):
        if not record.question:
            return self._fail(record, "empty question", "the question is empty")
        if not record.answer:
            return self._fail(record, "no answer", "the record has no answer")
        try:
            return load_image(record)
        except FileNotFoundError as error:
            return self._fail(record, "missing image", str(error))
        except OSError as error:
            return self._fail(record, "unreadable image", str(error))

    def _generate(self, records: list[SourceRecord], images: list, start: int) -> list[str | None]:
        torch.manual_seed(self.args.seed + start)
        try:
            return self.extractor.generate(images, [r.question for r in records])
        except (RuntimeError, ValueError) as error:
            if len(records) == 1:
                self._fail(records[0], "teacher failure", f"generation: {error}")
                return [None]
            logger.warning("Batched generation failed (%s); generating one at a time", error)
            return [self._generate([r], [i], start)[0] for r, i in zip(records, images)]

    def _batch(self, batch: list[SourceRecord], start: int) -> None:
        valid = [(r, image) for r in batch if (image := self._validate(r)) is not None]
        if not valid:
            return
        if self.args.response_from == "answer":
            responses = [record.answer for record, _ in valid]
        else:
            responses = self._generate([r for r, _ in valid], [i for _, i in valid], start)
        for (record, image), response in zip(valid, responses):
            if response is not None:
                self._sample(record, image, response)

    def _sample(self, record: SourceRecord, image, response: str) -> None:
        try:
            out = self.extractor.extract(image, record.question, response)
        except (TeacherError, RuntimeError, ValueError) as error:
            return self._fail(record, "teacher failure", str(error))
        if self._filtered_out(record, image.size, out):
            return
        self.writer.add(build_row(record, image.size, out, self.extractor.settings))
        self.counts.written += 1

    def _filtered_out(self, record: SourceRecord, image_size: tuple[int, int], out: TeacherOutput) -> bool:
        if self.args.min_box_mass is None or not record.bbox:
            return False
        traj = out.trajectories[self.args.box_filter_method]
        mass = box_mass(traj, out.grid, image_size, record.bbox, self.args.bbox_frame)
        if mass >= self.args.min_box_mass:
            return False
        entry = {"key": record.key, "index": record.index, "question_id": record.question_id, "box_mass": mass}
        self.writer.record(FILTERED_FILE, entry)
        self.counts.filtered += 1
        return True


# Run info, finalisation, push ------------------------------------------------------------------------------------


def settings_from_args(args: argparse.Namespace) -> tuple[ExtractionSettings, GenerationSettings]:
    extraction = ExtractionSettings(
        methods=tuple(args.methods),
        attention_layers=None if args.attention_layers is None else list(args.attention_layers),
        gradient_temperature=args.gradient_temperature,
        gradient_batch_size=args.gradient_batch_size,
        token_features=args.token_features,
        split_steps=args.split_steps,
    )
    generation = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        repetition_penalty=args.repetition_penalty,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.generation_batch_size,
    )
    return extraction, generation


def run_info(args, extractor: TeacherExtractor, features, n_records: int, shard: tuple[int, int], n_shard: int):
    """Everything that determines the shard's content (a restart must match it) plus card facts."""
    model = extractor.model
    min_pixels, max_pixels = pixel_limits(extractor.processor)
    return {
        "source": str(args.source),
        "image_root": args.image_root,
        "source_name": args.source_name,
        "source_columns": [args.image_column, args.question_column, args.answer_column, args.question_id_column],
        "split": args.split,
        "limit": args.limit,
        "source_records": n_records,
        "num_shards": shard[0],
        "shard_index": shard[1],
        "shard_records": n_shard,
        "teacher": str(Path(args.teacher).resolve()),
        "teacher_model_type": model.config.model_type,
        "hidden_size": extractor.hidden_size,
        "num_layers": len(extractor.decoder_layers),
        "layers": extractor.layers,
        "dtype": str(model.dtype).removeprefix("torch."),
        "attn_implementation": model.config._attn_implementation,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "extraction": extractor.settings.to_dict(),
        "response_from": args.response_from,
        "generation": vars(extractor.generation).copy(),
        "seed": args.seed,
        "min_box_mass": args.min_box_mass,
        "box_filter_method": args.box_filter_method,
        "bbox_frame": args.bbox_frame,
        "features": features.to_dict(),
    }


def command_line(args: argparse.Namespace) -> str:
    """The `lavit extract` command that reproduces the run (non-default options only)."""
    defaults = vars(make_parser().parse_args([]))
    parts = ["lavit", "extract"]
    for name, value in vars(args).items():
        if name in ("config", "merge") or value == defaults.get(name):
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def finalise(inputs: list[Path], out: Path, args: argparse.Namespace) -> datasets.Features:
    """Merge finished shards into `out`: parquet files, failures, card and manifest."""
    folders = shard_folders(inputs)
    info = check_shards(folders)
    features = datasets.Features.from_dict(info["features"])
    table = merged_table(folders)
    out.mkdir(parents=True, exist_ok=True)
    files = write_final(out, table, features, args.rows_per_file)
    failures = merge_jsonl(folders, FAILURES_FILE, out)
    filtered = merge_jsonl(folders, FILTERED_FILE, out)
    written = 0 if table is None else table.num_rows
    counts = {"records": info["source_records"], "written": written, "failed": len(failures),
              "filtered": len(filtered), "failure_reasons": dict(Counter(f["reason"] for f in failures))}
    if written + len(failures) + len(filtered) != info["source_records"]:
        raise ValueError(f"{counts}: written + failed + filtered does not cover the source's records.")
    if written == 0:
        # An empty dataset would only fail later, in load_dataset, with an arrow error that names nothing.
        raise ExtractionFailure(f"No sample was written: {counts}; the reasons are in {out / FAILURES_FILE}.")
    info.update(counts=counts, command=info.get("command") or command_line(args), files=files,
                pretty_name=args.pretty_name or out.resolve().name, license=args.license,
                lavit_version=_version())
    write_manifest(out, info)
    write_card(out, features, info, repo_id=args.push_to_hub or str(out))
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


# Entry point -----------------------------------------------------------------------------------------------------


def extract_shard(args: argparse.Namespace, records: list[SourceRecord], num_shards: int, shard_index: int, device):
    model, processor = load_teacher(args.teacher, device, args.dtype, args.min_pixels, args.max_pixels)
    extraction, generation = settings_from_args(args)
    extractor = TeacherExtractor(model, processor, extraction, generation)
    features = schema.lavit_features(extractor.hidden_size, extraction.token_features, extraction.methods)
    shard = records[shard_slice(len(records), num_shards, shard_index)]
    info = run_info(args, extractor, features, len(records), (num_shards, shard_index), len(shard))
    info["command"] = command_line(args)
    folder = Path(args.output_dir) / "chunks" / shard_dir_name(shard_index, num_shards)
    writer = ShardWriter(folder, features, info, args.chunk_size, args.retry_failed)
    counts = ShardRun(extractor, writer, args).run(shard)
    logger.info("Shard %d/%d: %s", shard_index, num_shards, counts.summary())
    return counts


def check_args(args: argparse.Namespace) -> None:
    if not args.output_dir:
        raise SystemExit("lavit extract: --output-dir is required.")
    if args.merge is None and not (args.source and args.teacher):
        raise SystemExit("lavit extract: --source and --teacher are required (or --merge DIR...).")
    if args.min_box_mass is not None and args.box_filter_method not in args.methods:
        raise SystemExit(f"lavit extract: --box-filter-method {args.box_filter_method} is not among --methods.")


def main(args: argparse.Namespace) -> None:
    check_args(args)
    out = Path(args.output_dir)
    if args.merge is not None:
        finalise([Path(p) for p in args.merge], out, args)
    else:
        num_shards, shard_index, device, state = resolve_sharding(args)
        columns = ColumnNames(args.image_column, args.question_column, args.answer_column, args.question_id_column)
        records = read_source(args.source, args.image_root, args.source_name, columns, args.split, args.limit)
        extract_shard(args, records, num_shards, shard_index, device)
        if state is not None:
            state.wait_for_everyone()
        if state is None and num_shards > 1:
            logger.info("Shard %d of %d done; when all are, run `lavit extract --merge %s --output-dir %s`.",
                        shard_index, num_shards, out, out)
            return
        if state is not None and not state.is_main_process:
            return
        finalise([out], out, args)
    if args.push_to_hub:
        push_to_hub(out, args.push_to_hub, args.private)


if __name__ == "__main__":  # `accelerate launch -m datasets_scripts.extract ...`
    from lavit_hf.arguments import parse_with_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(parse_with_config(make_parser(), sys.argv[1:]))


__all__ = [
    "ExtractionFailure",
    "ShardRun",
    "build_row",
    "finalise",
    "load_teacher",
    "main",
    "make_parser",
    "push_to_hub",
    "shard_slice",
]
