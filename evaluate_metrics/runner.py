"""`lavit eval`: batched greedy generation on a benchmark with one or more models, resumable predictions, and the
benchmark's score.

Every model of one command sees the same pixels (docs/method.md section 4): by default the pixel limits saved with
the LaViT checkpoints' processors (a model is evaluated at the resolution it was trained at), which a base model
compared in the same command gets too; `--min_pixels`/`--max_pixels` override them, with a warning for each
checkpoint saved with other limits. Any checkpoint that `AutoModelForImageTextToText` loads works. Two diagnostics
exist for LaViT models: `--force_latent` writes the K trained latent tokens at the start of the answer, and
`--mask_latent` hides them from every later position, for every generated token.

Each model's predictions go to `<output_dir>/<benchmark>/<model name>.jsonl`, with the model and the generation
settings beside them (`<model name>.settings.json`); a rerun generates only the missing items, and refuses a file
that another model or other settings started. The scores go to `<model name>.summary.json` and, for all the
models of the command, to `summary.md`.

Example:
    lavit eval --model ./lavit-3b Qwen/Qwen2.5-VL-3B-Instruct --benchmark mmvp --data_root ./MMVP --output_dir eval
"""

import argparse
import gc
import hashlib
import json
import logging
import os
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import evaluate
import torch
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    HfArgumentParser,
    PreTrainedModel,
    ProcessorMixin,
)

import lavit_hf  # noqa: F401  (registers LaViT with the Auto classes)
from lavit_hf.images import to_rgb
from lavit_hf.jsonl import JsonlAppender, read_jsonl
from lavit_hf.layout import pixel_limits, render_prompt, set_pixel_limits
from lavit_hf.run_settings import as_stored, settings_differences

from . import BENCHMARKS, get_benchmark, module_path


logger = logging.getLogger(__name__)


@dataclass
class EvalArguments:
    """The options of `lavit eval` (flags `--name`, or `--name-with-dashes`; `--config FILE.yaml` sets them too)."""

    model: list[str] = field(
        metadata={
            "help": "one or more checkpoints that AutoModelForImageTextToText loads (folders or Hub ids), all "
            "evaluated at the same pixel limits"
        }
    )
    benchmark: str = field(
        metadata={"help": "which benchmark (a folder of evaluate_metrics)", "choices": list(BENCHMARKS)}
    )
    data_root: str = field(metadata={"help": "the benchmark's official local layout (see its loader.py)"})
    output_dir: str = field(
        metadata={"help": "predictions, settings and scores go to <output_dir>/<benchmark>/; a rerun resumes them"}
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "only the first N items (MMVP scores pairs of items: keep N even)"}
    )
    batch_size: int = field(default=8, metadata={"help": "items per generate call"})
    max_new_tokens: int = field(default=512, metadata={"help": "greedy decoding limit (the paper: 512)"})
    force_latent: bool = field(default=False, metadata={"help": "start every answer with the K latent tokens"})
    mask_latent: bool = field(default=False, metadata={"help": "no later position may attend to the latent tokens"})
    min_pixels: int | None = field(
        default=None, metadata={"help": "image area lower limit; defaults to the one saved with the checkpoints"}
    )
    max_pixels: int | None = field(
        default=None, metadata={"help": "image area upper limit; defaults to the one saved with the checkpoints"}
    )
    device: str | None = field(default=None, metadata={"help": "torch device; defaults to cuda when available"})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(
        default="auto", metadata={"help": "dtype of the weights"}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "allow a checkpoint's own modeling code"})


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Option defaults in the help, and the description (its example command) as written."""


def make_parser() -> HfArgumentParser:
    """The `HfArgumentParser` of `EvalArguments`, plus `--config` (read by `lavit_hf.arguments.parse_with_config`)."""
    # No abbreviations: a flag of another verb or version (`--output`) must fail, not become `--output_dir`.
    parser = HfArgumentParser(EvalArguments, description=__doc__, formatter_class=_HelpFormatter, allow_abbrev=False)
    parser.add_argument("--config", default=None, help="YAML file of option values (keys: option names); flags win")
    return parser


def to_eval_arguments(args: argparse.Namespace | EvalArguments) -> EvalArguments:
    """The dataclass from what `lavit_hf.arguments.parse_with_config` returns (a Namespace, one entry per field)."""
    if isinstance(args, EvalArguments):
        return args
    (arguments,) = make_parser().parse_dict({key: value for key, value in vars(args).items() if key != "config"})
    return arguments


def _images(row: dict[str, Any]) -> list:
    image = row.get("image")
    if image is None:
        return []
    return [to_rgb(img) for img in (image if isinstance(image, list) else [image])]


def _trained_latent_prefix(model: PreTrainedModel, processor: ProcessorMixin) -> str:
    """The K trained latent tokens as text, in order; a clear error for a model that has none."""
    ids = getattr(model.config, "latent_token_ids", None)
    if not ids:
        raise ValueError(f"{type(model).__name__} has no latent tokens: --force_latent needs a LaViT model.")
    return "".join(processor.tokenizer.convert_ids_to_tokens(ids))


@torch.no_grad()
def weights_fingerprint(model: PreTrainedModel, values_per_tensor: int = 64) -> str:
    """
    A short digest of a model's weights: every tensor's name, shape and dtype, and `values_per_tensor` of its values
    taken at even strides. Two checkpoints trained apart differ in it, so predictions are never credited to
    weights that did not make them.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        if tensor.device.type != "meta" and tensor.numel():
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // values_per_tensor)][:values_per_tensor]
            digest.update(sample.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def settings_path(output: str | os.PathLike) -> Path:
    """Where the settings of a predictions file are recorded: `mmvp.jsonl` -> `mmvp.settings.json`."""
    output = Path(output)
    return output.with_name(f"{output.stem}.settings.json")


class EvalRunner:
    """
    Batched greedy generation over benchmark rows, appended to a resumable JSONL file.

    Args:
        model (`PreTrainedModel`):
            Any image-text-to-text model; LaViT models accept the two switches.
        processor (`ProcessorMixin`):
            Its processor.
        batch_size (`int`, *optional*, defaults to 8):
            Rows per `generate` call (left padding).
        max_new_tokens (`int`, *optional*, defaults to 512):
            The paper's limit.
        force_latent (`bool`, *optional*, defaults to `False`):
            Start every answer with the K trained latent tokens.
        mask_latent (`bool`, *optional*, defaults to `False`):
            No later position attends to the latent tokens.
        min_pixels (`int`, *optional*):
            The image processor's lower area limit; by default the one saved with `processor`.
        max_pixels (`int`, *optional*):
            The image processor's upper area limit; by default the one saved with `processor`.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        batch_size: int = EvalArguments.batch_size,
        max_new_tokens: int = EvalArguments.max_new_tokens,
        force_latent: bool = False,
        mask_latent: bool = False,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ):
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.mask_latent = mask_latent
        if mask_latent and not getattr(model.config, "latent_token_ids", None):
            raise ValueError(f"{type(model).__name__} has no latent tokens: --mask_latent needs a LaViT model.")
        self.prefix = _trained_latent_prefix(model, processor) if force_latent else ""
        saved_min, saved_max = pixel_limits(processor)
        set_pixel_limits(
            processor, saved_min if min_pixels is None else min_pixels, saved_max if max_pixels is None else max_pixels
        )
        processor.tokenizer.padding_side = "left"
        self._settings: dict[str, Any] | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """What decides the predictions: the model (its name and a digest of its weights) and the generation
        settings. A predictions file is only resumed under the same settings."""
        if self._settings is None:
            min_pixels, max_pixels = pixel_limits(self.processor)
            self._settings = {
                "model": self.model.name_or_path,
                "weights": weights_fingerprint(self.model),
                "dtype": str(self.model.dtype).removeprefix("torch."),
                "decoding": "greedy",
                "max_new_tokens": self.max_new_tokens,
                "min_pixels": min_pixels,
                "max_pixels": max_pixels,
                "force_latent": bool(self.prefix),
                "mask_latent": self.mask_latent,
            }
        return self._settings

    def prompts(self, rows: list[dict[str, Any]]) -> list[str]:
        return [render_prompt(self.processor, row["question"], len(_images(row))) + self.prefix for row in rows]

    @torch.no_grad()
    def generate(self, rows: list[dict[str, Any]]) -> list[str]:
        """Greedy answers for `rows` (each with `question` and `image`), decoded without special tokens."""
        images = [img for row in rows for img in _images(row)]
        inputs = self.processor(text=self.prompts(rows), images=images or None, return_tensors="pt", padding=True).to(
            self.model.device
        )
        extra = {"mask_latent": True} if self.mask_latent else {}
        output = self.model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=self.max_new_tokens,
            pad_token_id=self.processor.tokenizer.pad_token_id,
            **extra,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)

    def resume(self, output: str | os.PathLike) -> dict[str, dict[str, Any]]:
        """
        The predictions already in `output`, by id, once they are known to come from this model and these settings
        (recorded in `settings_path(output)`, written here when `output` holds none yet).

        Raises:
            `ValueError`: naming the file, when it holds predictions made with other settings (each difference is
                named), predictions without recorded settings, a record that is not `{"id", "prediction"}` or an id
                predicted twice.
        """
        output, recorded_path = Path(output), settings_path(output)
        done: dict[str, dict[str, Any]] = {}
        for number, record in enumerate(read_jsonl(output), start=1):
            if not isinstance(record.get("id"), str) or not isinstance(record.get("prediction"), str):
                raise ValueError(f"{output}, record {number}: expected string 'id' and 'prediction', got {record}.")
            if record["id"] in done:
                raise ValueError(f"{output}, record {number}: id {record['id']!r} is predicted a second time.")
            done[record["id"]] = record
        settings = as_stored(self.settings)
        if not done:
            output.parent.mkdir(parents=True, exist_ok=True)
            temporary = recorded_path.with_name(f"{recorded_path.name}.tmp")
            temporary.write_text(json.dumps(settings, indent=2) + "\n")
            os.replace(temporary, recorded_path)
            return done
        if not recorded_path.is_file():
            raise ValueError(
                f"{output} holds {len(done)} predictions but no {recorded_path.name}: which model and settings made "
                f"them is unknown. Write to another file, or delete {output} to start again."
            )
        recorded = json.loads(recorded_path.read_text())
        # The same weights under another name (a moved folder, a Hub id) may resume: the digest identifies them.
        differences = [
            f"{key} {there!r} there, {now!r} now"
            for key, (there, now) in settings_differences(recorded, settings, may_differ={"model"}).items()
        ]
        if differences:
            raise ValueError(
                f"{output} holds {len(done)} predictions made by other weights or settings ({'; '.join(differences)}; "
                f"see {recorded_path.name}). Write to another file, or delete both files to start again."
            )
        if recorded.get("model") != settings["model"]:
            logger.info("%s: the same weights as %r, now named %r.", output, recorded.get("model"), settings["model"])
        return done

    def run(
        self, dataset: datasets.Dataset, output: str | os.PathLike, max_samples: int | None = None
    ) -> list[dict[str, Any]]:
        """
        Generate for every row not yet in `output` (JSONL, appended batch by batch) and return all predictions.

        Args:
            dataset (`datasets.Dataset`):
                Rows with `id`, `question` and `image`.
            output (`str` or `os.PathLike`):
                The predictions file; its settings are recorded beside it (`settings_path`).
            max_samples (`int`, *optional*):
                Only the first `max_samples` rows.

        Returns:
            `list[dict]`: `{"id", "prediction"}` for every row, in the dataset's order.
        """
        output = Path(output)
        rows = dataset.select(range(min(len(dataset), max_samples))) if max_samples is not None else dataset
        done = self.resume(output)
        todo = [index for index, row_id in enumerate(rows["id"]) if row_id not in done]
        logger.info("%d of %d items already in %s; generating %d", len(rows) - len(todo), len(rows), output, len(todo))
        with JsonlAppender(output) as predictions, tqdm(total=len(todo), desc="generating", unit="item") as bar:
            for start in range(0, len(todo), self.batch_size):
                batch = [rows[index] for index in todo[start : start + self.batch_size]]
                records = [
                    {"id": row["id"], "prediction": text}
                    for row, text in zip(batch, self.generate(batch), strict=True)
                ]
                try:
                    predictions.write(*records)
                except OSError as error:  # a full disk names no file
                    raise OSError(f"Cannot append to the predictions file {output}: {error}") from error
                done.update((record["id"], record) for record in records)
                bar.update(len(batch))
        return [done[row_id] for row_id in rows["id"]]


def score(benchmark: str, dataset: datasets.Dataset, predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """The benchmark module's score of `predictions` against the dataset's rows (joined by id)."""
    metric = evaluate.load(module_path(benchmark))
    reference_fields = list(metric.features["references"])
    by_id = {row_id: index for index, row_id in enumerate(dataset["id"])}
    references = dataset.select_columns(reference_fields).select([by_id[p["id"]] for p in predictions])
    return metric.compute(predictions=predictions, references=list(references))


def shared_pixel_limits(
    saved: dict[str, tuple[int, int]],
    lavit: Collection[str],
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> tuple[int, int]:
    """
    The one `(min_pixels, max_pixels)` at which all the checkpoints of a command are evaluated.

    A limit not given is the one saved with the LaViT checkpoints (with none, with all the checkpoints), which must
    agree on it: a model is evaluated at the resolution it was trained at, and a base model compared with it sees
    the same pixels. A limit given overrides them, with a warning for each checkpoint saved with other limits.

    Args:
        saved (`dict[str, tuple[int, int]]`):
            Each checkpoint's saved limits (`lavit_hf.layout.pixel_limits` of its processor).
        lavit (`Collection[str]`):
            The checkpoints that are LaViT models.
        min_pixels (`int`, *optional*), max_pixels (`int`, *optional*):
            Explicit limits; one alone keeps the other from the checkpoints.

    Raises:
        `ValueError`: the checkpoints that decide disagree on a limit that was not given; the message names each
            checkpoint's limits and the flag to pass.
    """
    deciding = [name for name in saved if name in lavit] or list(saved)
    chosen = []
    for position, given in enumerate((min_pixels, max_pixels)):
        values = {saved[name][position] for name in deciding}
        chosen.append(given if given is not None else values.pop() if len(values) == 1 else None)
    if None in chosen:
        listed = "; ".join(f"{name}: min {saved[name][0]}, max {saved[name][1]}" for name in deciding)
        flags = [flag for flag, value in zip(("--min_pixels", "--max_pixels"), chosen, strict=True) if value is None]
        raise ValueError(
            f"The checkpoints were saved with different pixel limits ({listed}): pass {' and '.join(flags)} to "
            "evaluate them at one resolution."
        )
    limits = (chosen[0], chosen[1])
    for name, own in saved.items():
        if own == limits:
            continue
        if min_pixels is None and max_pixels is None:
            logger.info(
                "%s: saved with pixel limits min %d, max %d; evaluated at min %d, max %d, the limits of %s, so that "
                "every model sees the same pixels.", name, *own, *limits, ", ".join(deciding),
            )  # fmt: skip
        else:
            logger.warning(
                "%s was saved with pixel limits min %d, max %d; --min_pixels/--max_pixels evaluate it at min %d, "
                "max %d instead.", name, *own, *limits,
            )  # fmt: skip
    return limits


def output_names(models: list[str]) -> dict[str, str]:
    """
    A file name for each model: the last part of its folder or Hub id, with as many parent parts as it takes to
    tell it from the other models.

    Example:

    ```python
    >>> output_names(["Qwen/Qwen2.5-VL-3B-Instruct", "no-such-dir/a/ckpt", "no-such-dir/b/ckpt"]).values()
    dict_values(['Qwen2.5-VL-3B-Instruct', 'a--ckpt', 'b--ckpt'])

    ```
    """
    repeated = sorted({model for model in models if models.count(model) > 1})
    if repeated:
        raise ValueError(f"--model names {repeated} more than once.")
    parts = {
        model: Path(model).resolve().parts[1:]
        if Path(model).exists()
        else tuple(re.split(r"[\\/]+", model.strip("/")))
        for model in models
    }
    depth = dict.fromkeys(models, 1)
    while True:
        names = {model: "--".join(parts[model][-depth[model] :]) for model in models}
        clashing = [model for model in models if list(names.values()).count(names[model]) > 1]
        if not clashing:
            return {model: re.sub(r"[^\w.-]+", "_", name) for model, name in names.items()}
        if all(depth[model] >= len(parts[model]) for model in clashing):
            raise ValueError(f"--model names the same checkpoint more than once: {clashing}.")
        for model in clashing:
            depth[model] = min(depth[model] + 1, len(parts[model]))


def summary_markdown(
    benchmark: str, rows: dict[str, dict[str, Any]], limits: tuple[int, int], max_new_tokens: int
) -> str:
    """One table row per model, one column per score."""
    columns = list(dict.fromkeys(key for scores in rows.values() for key in scores))
    lines = [f"# {benchmark}", "", "| model | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for model, scores in rows.items():
        cells = [
            f"{scores[key]:.4f}" if isinstance(scores.get(key), float) else str(scores.get(key, "")) for key in columns
        ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Greedy decoding, at most {max_new_tokens} new tokens; pixel limits min {limits[0]}, max {limits[1]}.",
    ]
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace | EvalArguments) -> dict[str, dict[str, Any]]:
    """Evaluate every `--model` on the benchmark at shared pixel limits; returns each model's scores."""
    args = to_eval_arguments(args)
    benchmark = get_benchmark(args.benchmark)
    names = output_names(args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    configs = {name: AutoConfig.from_pretrained(name, trust_remote_code=args.trust_remote_code) for name in args.model}
    lavit = [name for name, config in configs.items() if getattr(config, "latent_token_ids", None)]
    if args.force_latent or args.mask_latent:
        plain = [name for name in args.model if name not in lavit]
        if plain:
            raise ValueError(f"--force_latent and --mask_latent need LaViT models; {plain} have no latent tokens.")
    processors = {
        name: AutoProcessor.from_pretrained(name, trust_remote_code=args.trust_remote_code) for name in args.model
    }
    limits = shared_pixel_limits(
        {name: pixel_limits(processor) for name, processor in processors.items()},
        lavit,
        args.min_pixels,
        args.max_pixels,
    )
    dataset = benchmark.load(args.data_root)
    folder = Path(args.output_dir) / benchmark.name
    results = {}
    for name in args.model:
        model = AutoModelForImageTextToText.from_pretrained(
            name, dtype=args.dtype, trust_remote_code=args.trust_remote_code
        ).to(device)
        runner = EvalRunner(
            model,
            processors[name],
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            force_latent=args.force_latent,
            mask_latent=args.mask_latent,
            min_pixels=limits[0],
            max_pixels=limits[1],
        )
        predictions = runner.run(dataset, folder / f"{names[name]}.jsonl", args.max_samples)
        results[name] = score(benchmark.name, dataset, predictions)
        summary = {"benchmark": benchmark.name, "model": name, "settings": runner.settings, "scores": results[name]}
        (folder / f"{names[name]}.summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        del model, runner
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    markdown = summary_markdown(
        benchmark.name, {names[name]: results[name] for name in args.model}, limits, args.max_new_tokens
    )
    (folder / "summary.md").write_text(markdown)
    logger.info("\n%s", markdown)
    return results


__all__ = [
    "EvalArguments",
    "EvalRunner",
    "main",
    "make_parser",
    "output_names",
    "score",
    "settings_path",
    "shared_pixel_limits",
    "to_eval_arguments",
    "weights_fingerprint",
]
