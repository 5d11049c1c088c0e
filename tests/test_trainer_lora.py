"""LoRA and QLoRA (PEFT) on a tiny student, CPU: what trains, what stays, checkpoints, merge, both stages."""

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from lavit_hf.arguments import parse_with_config
from lavit_hf.testing_utils import synthetic_lavit_dataset
from trainer import LaViTTrainer, LaViTTrainingArguments
from trainer.lora import LAVIT_CONFIG_NAME, is_peft_model, load_lora_checkpoint, merge_lora_checkpoint
from trainer.train import main, make_parser, with_target_format


D = 48
RANK = 4
# Tiny student: hidden 64, MLP 128, 2 decoder layers, 4 query heads and 2 key-value heads of width 16.
LORA_PER_LAYER = RANK * sum(
    fan_in + fan_out
    for fan_in, fan_out in ((64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64))  # q k v o g u d
)
HEADS = (64 * 64 + 64 + 64 * D + D) + (64 * 64 + 64)  # vtop_head (Linear, GELU, Linear) and trajectory_query
LATENT_ROWS = 2 * 4 * 64  # 4 latent rows of the input embeddings and of the untied LM head


def _args(output_dir, **overrides) -> LaViTTrainingArguments:
    values = dict(
        output_dir=str(output_dir), use_peft=True, lora_r=RANK, lora_alpha=8, lora_dropout=0.0, min_pixels=3136,
        max_pixels=3136, activation_checkpointing=False, per_device_train_batch_size=2, gradient_accumulation_steps=1,
        learning_rate=1e-2, warmup_steps=0, max_steps=2, logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=True, seed=0,
    )  # fmt: skip
    values.update(overrides)
    return LaViTTrainingArguments(**values)


@pytest.fixture(scope="module")
def dataset():
    return with_target_format(synthetic_lavit_dataset(4, D, image_sizes=((56, 56),), teacher_grids=((2, 2),)))


@pytest.fixture(scope="module")
def trained(tiny_lavit_pair, dataset, module_tmp_dir):
    """A LoRA run of two steps on the tiny student, its model saved; with the weights before training."""
    model, processor = copy.deepcopy(tiny_lavit_pair[0]), tiny_lavit_pair[1]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    output_dir = module_tmp_dir("lora")
    student = output_dir / "student"
    model.save_pretrained(student)  # the base the adapter names (a LaViT checkpoint on disk)
    model = type(model).from_pretrained(student)
    trainer = LaViTTrainer(model, _args(output_dir / "run"), train_dataset=dataset, processing_class=processor)
    trainer.train()
    trainer.save_model()
    return trainer, before, output_dir / "run"


def test_exactly_the_adapter_heads_and_latent_rows_train(trained):
    trainer, _, _ = trained
    assert is_peft_model(trainer.model)
    trainable = {name: p.numel() for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == 2 * LORA_PER_LAYER + HEADS + LATENT_ROWS == 20_144
    kinds = {
        ("lora_" in name) + 2 * ("modules_to_save" in name) + 4 * ("trainable_tokens" in name) for name in trainable
    }
    assert kinds == {1, 2, 4}  # nothing of the base itself
    assert not any("visual" in name for name in trainable)


def test_the_base_does_not_move(trained):
    trainer, before, _ = trained
    base = trainer.model.get_base_model()
    latent = base.config.latent_token_ids
    moved = []
    for name, parameter in base.named_parameters():
        if any(part in name for part in ("lora_", "modules_to_save", "trainable_tokens")):
            continue
        original = name.replace(".base_layer", "").replace(".original_module", "").replace(".token_adapter", "")
        if not torch.equal(parameter, before[original]):
            moved.append(name)
    assert moved == []
    # The trained parts did move: the heads' copies and the latent rows.
    assert not torch.equal(base.vtop_head.modules_to_save["default"][0].weight, before["vtop_head.0.weight"])
    rows = base.model.language_model.embed_tokens.token_adapter.trainable_tokens_delta["default"]
    assert not torch.equal(rows, before["model.language_model.embed_tokens.weight"][latent])


def test_adapter_checkpoint_reloads_to_equal_logits_and_merges(trained, dataset, tmp_path):
    trainer, _, run = trained
    files = {path.name for path in run.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", LAVIT_CONFIG_NAME, "README.md", "tokenizer.json",
            "processor_config.json"} <= files  # fmt: skip
    assert "model.safetensors" not in files
    batch = trainer.data_collator([dataset[0], dataset[1]])
    model = trainer.model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
        reloaded = load_lora_checkpoint(run).eval()
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=0)
    merged = merge_lora_checkpoint(run, tmp_path / "merged")
    # A full LaViT checkpoint, loaded where lavit_hf is not importable (remote code), gives the same logits.
    torch.save({key: value for key, value in batch.items()}, tmp_path / "batch.pt")
    torch.save(expected, tmp_path / "expected.pt")
    result = _fresh_process(
        tmp_path, MERGED_LOAD, str(merged), str(tmp_path / "batch.pt"), str(tmp_path / "expected.pt")
    )
    assert result["class"] == "LaViTForConditionalGeneration" and result["module"].startswith("transformers_modules")
    assert result["max_difference"] < 1e-4 and result["stage"] == 0 and "model.safetensors" in result["files"]


MERGED_LOAD = textwrap.dedent(
    """
    import importlib.abc, json, os, sys
    import torch

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("lavit_hf", "trainer"):
                raise ImportError("blocked: " + name)

    sys.meta_path.insert(0, Block())
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != sys.argv[1]]
    from transformers import AutoModelForImageTextToText

    folder, batch, expected = sys.argv[2:]
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(**torch.load(batch)).logits
    print("RESULT " + json.dumps({
        "class": type(model).__name__, "module": type(model).__module__, "stage": model.config.training_stage,
        "max_difference": (logits - torch.load(expected)).abs().max().item(), "files": os.listdir(folder),
    }))
    """
)


def _fresh_process(tmp_path: Path, code: str, *argv: str) -> dict:
    import os

    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    completed = subprocess.run([sys.executable, "-c", code, repo, *argv], cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=300)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.mark.parametrize(("family", "student_type"), [("qwen2_5_vl", "lavit"), ("qwen3_vl", "lavit_qwen3_vl")])
def test_both_stages_under_lora_from_a_qwen_checkpoint(tmp_path, tiny_teachers, family, student_type):
    """`lavit train --use_peft` from a base checkpoint of a student family: the student is converted once into
    `output_dir/base_model` (of that family); stage 1 trains an adapter under the bottleneck, stage 2 trains the same
    adapter on; each stage's folder holds an adapter on that base, which reloads as that family's student; a rerun
    trains nothing."""
    tiny_teacher_dir = tmp_path / "base"
    for part in tiny_teachers(family):
        part.save_pretrained(tiny_teacher_dir)
    data = tmp_path / "data"
    synthetic_lavit_dataset(4, D, image_sizes=((56, 56),), teacher_grids=((2, 2),)).to_parquet(
        data / "data" / "train-00000-of-00001.parquet"
    )
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "dataset_name_or_path": str(data), "model_name_or_path": str(tiny_teacher_dir),
        "output_dir": str(tmp_path / "out"), "stage_schedule": "two_stage", "stage1_steps": 1, "stage2_steps": 1,
        "stage1_learning_rate": 1e-2, "stage2_learning_rate": 1e-2, "stage1_warmup_ratio": 0.0,
        "stage2_warmup_ratio": 0.0, "use_peft": True, "lora_r": RANK, "min_pixels": 3136, "max_pixels": 3136,
        "activation_checkpointing": False, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
        "logging_steps": 1, "report_to": "none", "disable_tqdm": True, "use_cpu": True, "save_strategy": "no",
    }))
    main(parse_with_config(make_parser(), ["--config", str(config)]))
    out = tmp_path / "out"
    base = out / "base_model"
    assert json.loads((base / "config.json").read_text())["model_type"] == student_type
    reloaded = load_lora_checkpoint(out / "stage2")
    assert reloaded.get_base_model().config.model_type == student_type
    for stage in (1, 2):
        folder = out / f"stage{stage}"
        adapter = json.loads((folder / "adapter_config.json").read_text())
        assert Path(adapter["base_model_name_or_path"]) == base
        assert sorted(adapter["modules_to_save"]) == ["trajectory_query", "vtop_head"]
        assert json.loads((folder / LAVIT_CONFIG_NAME).read_text())["training_stage"] == stage
        assert not (folder / "model.safetensors").exists()
    from safetensors.torch import load_file

    stage1, stage2 = (load_file(out / f"stage{stage}" / "adapter_model.safetensors") for stage in (1, 2))
    assert stage1.keys() == stage2.keys()
    assert any(not torch.equal(stage1[key], stage2[key]) for key in stage1)  # stage 2 trained the adapter on
    card = (out / "stage2" / "README.md").read_text()
    assert "Stage 1: bottleneck" in card and "LoRA" in card
    mtime = (out / "stage2" / "adapter_model.safetensors").stat().st_mtime_ns
    main(parse_with_config(make_parser(), ["--config", str(config)]))
    assert (out / "stage2" / "adapter_model.safetensors").stat().st_mtime_ns == mtime


def test_lora_checkpoint_resumes(tiny_lavit_pair, dataset, tmp_path):
    def run(output_dir, resume=None):
        model = copy.deepcopy(tiny_lavit_pair[0])
        args = _args(output_dir, max_steps=2, save_strategy="steps", save_steps=1, lr_scheduler_type="constant")
        trainer = LaViTTrainer(model, args, train_dataset=dataset, processing_class=tiny_lavit_pair[1])
        trainer.train(resume_from_checkpoint=resume)
        return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}

    full = run(tmp_path / "full")
    resumed = run(tmp_path / "resumed", str(tmp_path / "full" / "checkpoint-1"))
    assert resumed[2] == pytest.approx(full[2], rel=1e-5)


def test_qlora_wiring_on_cpu(tiny_lavit_pair, dataset, tmp_path):
    """A 4-bit base (bitsandbytes runs it on the CPU too): the decoder projections are quantised, the heads, the
    LM head and the vision tower are not, and training moves only the adapter, the heads and the latent rows."""
    pytest.importorskip("bitsandbytes", reason="QLoRA needs the qlora extra (bitsandbytes)")
    from bitsandbytes.nn import Linear4bit

    from trainer.train import load_student

    student = tmp_path / "student"
    tiny_lavit_pair[0].save_pretrained(student)
    args = _args(tmp_path / "run", load_in_4bit=True, max_steps=1)
    model, processor = load_student(student, D, args)
    assert isinstance(model.model.language_model.layers[0].mlp.up_proj, Linear4bit)
    kept = (model.vtop_head[0], model.trajectory_query, model.lm_head, model.model.visual.blocks[0].mlp.up_proj)
    for module in kept:
        assert not isinstance(module, Linear4bit)
    quantised = model.model.language_model.layers[0].mlp.up_proj.weight.detach().clone()
    trainer = LaViTTrainer(model, args, train_dataset=dataset, processing_class=processor)
    trainer.train()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert trainable == 2 * LORA_PER_LAYER + HEADS + LATENT_ROWS
    assert torch.equal(trainer.model.get_base_model().model.language_model.layers[0].mlp.up_proj.weight, quantised)
    trainer.save_model()
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


def test_qlora_computes_in_bf16_under_autocast_and_over_bf16_weights(tmp_path):
    # bf16 weights train without autocast (`bf16` resolves False over them): the 4-bit layers still compute in bf16.
    pytest.importorskip("bitsandbytes", reason="QLoRA needs the qlora extra (bitsandbytes)")
    from trainer.lora import quantization_config

    for overrides, dtype in (({}, torch.float32), ({"model_dtype": "bfloat16"}, torch.bfloat16), ({"bf16": True}, torch.bfloat16)):
        args = _args(tmp_path, load_in_4bit=True, **overrides)
        assert quantization_config(args).bnb_4bit_compute_dtype == dtype, overrides


def test_peft_flags_are_checked(tmp_path):
    with pytest.raises(ValueError, match="add --use_peft"):
        LaViTTrainingArguments(output_dir=str(tmp_path), load_in_4bit=True)
    with pytest.raises(ValueError, match="freeze_vision and freeze_llm only apply to full fine-tuning"):
        LaViTTrainingArguments(output_dir=str(tmp_path), use_peft=True, freeze_llm=True)
    with pytest.raises(ValueError, match="at most one"):
        LaViTTrainingArguments(output_dir=str(tmp_path), use_peft=True, load_in_4bit=True, load_in_8bit=True)
