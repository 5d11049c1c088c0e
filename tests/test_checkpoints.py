"""Saving, loading and converting checkpoints of every student family: Auto classes, remote code, conversion of a base
checkpoint, make-tiny."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from lavit_cli.cli import main as lavit_main
from lavit_hf import STUDENT_FAMILIES, LaViTForConditionalGeneration, lavit_from_base


FAMILIES = list(STUDENT_FAMILIES)


def text_inputs(processor, text="The quick brown fox"):
    return processor(text=[text], return_tensors="pt")


def test_remote_code_round_trip_without_the_package(tiny_students, tmp_path):
    """Each family's checkpoint loads with `trust_remote_code=True` in a process where lavit_hf cannot be imported (one
    subprocess for all families) and gives the same logits."""
    expected = {}
    for family in FAMILIES:
        model, processor = tiny_students(family)
        folder = tmp_path / family
        model.save_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())
        config_file, config_class = config["auto_map"]["AutoConfig"].split(".")
        model_file, model_class = config["auto_map"]["AutoModelForImageTextToText"].split(".")
        assert config_class == type(model.config).__name__ and model_class == type(model).__name__
        assert {f"{config_file}.py", f"{model_file}.py", "modeling_lavit_core.py", "masks.py", "heads.py"} <= {
            p.name for p in folder.iterdir()
        }
        inputs = text_inputs(processor)
        with torch.no_grad():
            expected[family] = {"inputs": dict(inputs), "logits": model(**inputs).logits}
    torch.save(expected, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["lavit_hf"] = None  # importing lavit_hf now raises ImportError
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        try:
            import lavit_hf
        except ImportError:
            pass
        else:
            raise SystemExit("lavit_hf is importable")
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        for family, saved in expected.items():
            folder = {str(tmp_path)!r} + "/" + family
            model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            processor = AutoProcessor.from_pretrained(folder)
            assert processor.tokenizer.convert_tokens_to_ids("<lvr4>") == model.config.latent_token_ids[-1]
            with torch.no_grad():
                logits = model.eval()(**saved["inputs"]).logits
            assert torch.equal(logits, saved["logits"]), (family, (logits - saved["logits"]).abs().max())
            print("REMOTE-OK", family)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert all(f"REMOTE-OK {family}" in result.stdout for family in FAMILIES), result.stderr[-3000:]


@pytest.mark.parametrize("family", FAMILIES)
def test_installed_package_needs_no_remote_code(tiny_students, tmp_path, family):
    model, processor = tiny_students(family)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    assert loaded.config.latent_token_ids == model.config.latent_token_ids
    inputs = text_inputs(processor)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)
    assert (
        AutoProcessor.from_pretrained(tmp_path).tokenizer.convert_tokens_to_ids("<lvr1>")
        == model.config.latent_token_ids[0]
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_base_checkpoint_converts_with_every_weight(tiny_teachers, tmp_path, family):
    """`lavit_from_base` on a saved base checkpoint of each family: every weight arrives (it raises on any missing or
    unexpected key; the values are checked here too), the logits are the base's, the latent rows are initialised."""
    base, base_processor = tiny_teachers(family)
    base.save_pretrained(tmp_path)
    base_processor.save_pretrained(tmp_path)
    student, processor = lavit_from_base(tmp_path, num_latent_tokens=4, teacher_hidden_size=32)
    assert type(student) is STUDENT_FAMILIES[family].for_generation_class
    base_state = base.state_dict()
    student_state = student.state_dict()
    for key, value in base_state.items():
        if key.endswith(("embed_tokens.weight", "lm_head.weight")):
            assert torch.equal(student_state[key][: value.shape[0]], value), key
        else:
            assert torch.equal(student_state[key], value), key
    inputs = text_inputs(processor)
    with torch.no_grad():
        before = base(**inputs).logits
        after = student(**inputs).logits
    assert torch.equal(after[..., : before.shape[-1]], before)
    # The latent rows are initialised (near the mean embedding), not left at random init.
    rows = student.get_input_embeddings().weight[student.config.latent_token_ids]
    mean = base.get_input_embeddings().weight.mean(0)
    assert (rows - mean).abs().max() < 0.05 * base.get_input_embeddings().weight.std()


def test_a_loaded_base_model_converts_too(tiny_teachers):
    base, processor = tiny_teachers("qwen3_vl")
    student, _ = lavit_from_base(base, processor, teacher_hidden_size=32)
    missing = [key for key in base.state_dict() if key not in student.state_dict()]
    assert missing == [] and student.config.model_type == "lavit_qwen3_vl" and student.vtop_head is not None


def test_conversion_refuses_a_checkpoint_with_missing_weights(tiny_teacher_pair, tmp_path):
    qwen, processor = tiny_teacher_pair
    broken = {k: v for k, v in qwen.state_dict().items() if "layers.1." not in k}
    qwen.save_pretrained(tmp_path, state_dict=broken)
    processor.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="left weights unloaded: missing"):
        lavit_from_base(tmp_path, teacher_hidden_size=32)


def test_conversion_refuses_other_families_by_name(tiny_teachers, tmp_path):
    gemma, processor = tiny_teachers("gemma3")
    with pytest.raises(
        ValueError, match="model_type 'gemma3' has no LaViT student family; supported: qwen2_vl, qwen2_5_vl, qwen3_vl"
    ):
        lavit_from_base(gemma, processor)
    gemma.config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"{tmp_path}: model_type 'gemma3' has no LaViT student family"):
        lavit_from_base(tmp_path)
    with pytest.raises(ValueError, match="converts 'qwen2_5_vl' checkpoints, got model_type 'gemma3'"):
        LaViTForConditionalGeneration.from_base(gemma, processor)


@pytest.mark.parametrize(
    ("kind", "family"), [("student", "qwen2_5_vl"), ("teacher", "qwen2_5_vl"), ("teacher", "gemma3")]
)
def test_make_tiny_cli(kind, family, tmp_path):
    lavit_main(["make-tiny", "--kind", kind, "--family", family, "--out", str(tmp_path)])
    model = AutoModelForImageTextToText.from_pretrained(tmp_path)
    expected = {
        ("student", "qwen2_5_vl"): "LaViTForConditionalGeneration",
        ("teacher", "qwen2_5_vl"): "Qwen2_5_VLForConditionalGeneration",
        ("teacher", "gemma3"): "Gemma3ForConditionalGeneration",
    }[kind, family]
    assert type(model).__name__ == expected
    assert len(AutoProcessor.from_pretrained(tmp_path).tokenizer) >= 151669


@pytest.mark.parametrize("family", FAMILIES)
def test_a_reloaded_checkpoint_finds_its_latent_tokens(tiny_students, tmp_path, family):
    model, processor = tiny_students(family)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    ids = processor(text=["a <lvr1><lvr2><lvr3><lvr4> b"], return_tensors="pt")["input_ids"]
    positions = loaded.token_layout(ids, need_latents=True).latent_positions
    assert positions.tolist() == model.token_layout(ids, need_latents=True).latent_positions.tolist()
    assert loaded.model.latent_ids(ids.device).tolist() == model.config.latent_token_ids
