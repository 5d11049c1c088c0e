"""The model card of a LaViT checkpoint, rendered from `model_card_template.md` (TRL's card pattern)."""

import logging
import os
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import yaml
from huggingface_hub import ModelCard, ModelCardData

from lavit_hf.layout import latent_prefix


logger = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).parent
LOSS_PNG = "loss_curves.png"
CURVE_KEYS = ("loss", "loss_ce", "loss_vtop", "loss_traj")
MAX_CURVE_ROWS = 20
STAGE_TEXT = {
    "single": ("Single stage", "Causal attention and all three losses (docs/method.md section 3)."),
    "stage1": (
        "Stage 1: bottleneck",
        "The answer after the latent tokens cannot attend to the image tokens (with `block_prompt`, neither can the "
        "question after the image), so visual information reaches the answer only through the latent tokens.",
    ),
    "stage2": ("Stage 2: joint", "Causal attention and all three losses, from stage 1's weights."),
}
HYPERPARAMETERS = (
    "model_dtype",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "lr_scheduler_type",
    "optim",
    "bf16",
    "activation_checkpointing",
    "freeze_vision",
    "freeze_llm",
    "block_prompt",
    "ce_in_stage1",
    "latent_separator",
    "trajectory_prediction",
    "trajectory_attention_layers",
    "head_layer",
    "num_latent_tokens",
    "torch_compile",
    "train_sampling_strategy",
    "seed",
)


def stage_record(trainer) -> dict[str, Any]:
    """What the card says about one stage run by `trainer`: its schedule name, hyperparameters and log history."""
    args = trainer.args
    return {
        "schedule": args.stage_schedule,
        "steps": trainer.state.global_step,
        "learning_rate": args.learning_rate,
        "warmup": args.warmup_steps,
        "weights": " / ".join(str(getattr(args, name)) for name in ("ce_loss_weight", "vtop_loss_weight", "trajectory_loss_weight")),
        "log_history": list(trainer.state.log_history),
    }


def _fmt(value: Any) -> str:
    value = getattr(value, "value", value)  # enums (scheduler, optimiser) by their value
    if isinstance(value, str) and (not value.strip() or not value.isprintable()):
        return repr(value)  # a separator such as " " or "\n" stays visible and keeps the table row intact
    return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))


def _curve(log_history: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Training log entries with a loss, thinned to at most `MAX_CURVE_ROWS` rows (the last one always kept)."""
    rows = [entry for entry in log_history if "loss" in entry and "step" in entry]
    if len(rows) > MAX_CURVE_ROWS:
        stride = -(-len(rows) // MAX_CURVE_ROWS)
        rows = rows[::stride][: MAX_CURVE_ROWS - 1] + [rows[-1]]
    return [{"step": entry["step"], **{key: _fmt(entry.get(key)) for key in CURVE_KEYS}} for entry in rows]


def _eval_results(log_history: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The last evaluation's `eval_*` metrics, when there was one."""
    evaluations = [entry for entry in log_history if any(key.startswith("eval_") for key in entry)]
    if not evaluations:
        return []
    last = evaluations[-1]
    return [(key, _fmt(value)) for key, value in sorted(last.items()) if key.startswith("eval_")]


def plot_loss_curves(records: list[dict[str, Any]], path: Path) -> bool:
    """Plot each loss term against the optimiser step over all stages (stages placed end to end) into `path`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: the model card shows the loss table only.")
        return False
    offset, series = 0, {key: ([], []) for key in CURVE_KEYS}
    for record in records:
        for entry in record["log_history"]:
            for key in CURVE_KEYS:
                if key in entry and "step" in entry:
                    series[key][0].append(offset + entry["step"])
                    series[key][1].append(entry[key])
        offset += record["steps"]
    if not any(steps for steps, _ in series.values()):
        return False
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for key, (steps, values) in series.items():
        if steps:
            axis.plot(steps, values, label=key)
    axis.set_xlabel("optimiser step")
    axis.set_ylabel("training loss")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return True


def write_model_card(trainer, model_name: str | None, dataset_name: str | None, tags: list[str]) -> Path:
    """Render the card of `trainer`'s model (its earlier stages included) into `output_dir/README.md`."""
    from lavit_hf import __version__ as lavit_version

    from .lora import base_model_of, is_peft_model

    args, model = trainer.args, trainer.accelerator.unwrap_model(trainer.model)
    config = base_model_of(model).config
    records = [*trainer.stage_history, stage_record(trainer)]
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    has_png = plot_loss_curves(records, output_dir / LOSS_PNG)
    base_model = args.model_name_or_path
    dataset_name = dataset_name or args.dataset_name_or_path
    hub_model_id = args.hub_model_id or model_name or output_dir.name
    license_id = args.license or _base_license(base_model) or "other"
    stages = []
    for record in records:
        title, description = STAGE_TEXT[record["schedule"]]
        stages.append({**record, "title": title, "description": description, "curve": _curve(record["log_history"])})
    card_data = ModelCardData(
        license=license_id,
        base_model=base_model if _is_hub_id(base_model) else None,
        datasets=[dataset_name] if _is_hub_id(dataset_name) else None,
        library_name="peft" if is_peft_model(model) else "transformers",
        pipeline_tag="image-text-to-text",
        tags=sorted(set(tags) | ({"lora"} if is_peft_model(model) else set())),
        model_name=model_name,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_DIR / trainer._template_file),
        model_name=model_name or output_dir.name,
        hub_model_id=hub_model_id,
        base_model=_public_name(base_model),
        base_model_url=_url(base_model, "models"),
        dataset_name=_public_name(dataset_name),
        dataset_url=_url(dataset_name, "datasets"),
        trainer_name=type(trainer).__name__,
        paper_title=trainer._paper["title"],
        paper_id=trainer._paper["id"],
        paper_citation=trainer._paper["citation"],
        num_latent_tokens=config.num_latent_tokens,
        latent_tokens=latent_prefix(config.num_latent_tokens),
        trajectory_method=args.trajectory_method,
        vtop_source=args.vtop_source,
        teacher_hidden_size=config.teacher_hidden_size,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        max_length=getattr(trainer, "max_length", None) or args.max_length,
        skipped={split: len(ids) for split, ids in getattr(trainer, "skipped_long_samples", {}).items()},
        lora=_lora_facts(model, args),
        stages=stages,
        loss_png=LOSS_PNG if has_png else None,
        hyperparameters=[(name, _fmt(getattr(args, name))) for name in HYPERPARAMETERS],
        eval_results=_eval_results(records[-1]["log_history"]),
        license_text=(
            f"`{license_id}`" + (" (the base model's)" if not args.license and license_id != "other" else "")
            + ("" if license_id != "other" else ": not recorded; the base model's and the dataset's licenses apply.")
        ),
        lavit_version=lavit_version,
        transformers_version=transformers.__version__,
        pytorch_version=torch.__version__,
        datasets_version=datasets.__version__,
    )
    path = output_dir / "README.md"
    card.save(path)
    return path


def _lora_facts(model, args) -> dict[str, Any] | None:
    """What the card says about a LoRA adapter, or `None` for a full model."""
    from .lora import is_peft_model

    if not is_peft_model(model):
        return None
    config = model.peft_config[model.active_adapter]
    quantization = "4 bits" if args.load_in_4bit else "8 bits" if args.load_in_8bit else None
    if quantization == "4 bits":
        quantization += f" ({args.bnb_4bit_quant_type}{', double quantisation' if args.use_bnb_nested_quant else ''})"
    targets = config.target_modules
    return {
        "base": _public_name(config.base_model_name_or_path),
        "r": config.r,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "target_modules": targets if isinstance(targets, str) else ", ".join(sorted(targets)),
        "tied": model.get_base_model().config.tie_word_embeddings,
        "quantization": quantization,
    }


def _base_license(name: str | None) -> str | None:
    """The `license` of the base model's own card, when it has one on disk (a local folder)."""
    if not name or not (Path(name) / "README.md").is_file():
        return None
    try:
        return ModelCard.load(Path(name) / "README.md").data.license
    except (ValueError, yaml.YAMLError) as error:  # a README whose metadata block does not parse
        logger.warning("No license read from %s/README.md: %s", name, error)
        return None


def _is_hub_id(name: str | None) -> bool:
    """A `namespace/name` Hub id, not a local path (the card metadata must not name a local folder)."""
    if not name or name.startswith((".", "/", "~")) or name.count("/") != 1:
        return False
    return not Path(name).expanduser().exists()


def _public_name(name: str | os.PathLike | None) -> str | None:
    """A Hub id as it is; a local folder by its name alone (a card never holds an absolute local path)."""
    if not name:
        return None
    return str(name) if _is_hub_id(str(name)) else Path(name).expanduser().resolve().name


def _url(name: str | None, kind: str) -> str:
    if not _is_hub_id(name):
        return ""
    return f"https://huggingface.co/{'datasets/' if kind == 'datasets' else ''}{name}"


__all__ = ["plot_loss_curves", "stage_record", "write_model_card"]
