"""The shapes task: one answer vocabulary for the generator and the module, and the loader of a written split."""

import evaluate
import pytest

from evaluate_metrics import load_benchmark, module_path
from evaluate_metrics.shapes import shapes
from lavit_cli import task as synthetic


@pytest.fixture(scope="module")
def split(module_tmp_dir):
    folder = module_tmp_dir("shapes")
    samples = synthetic.generate_samples(12, seed=0, split="test", question_types=synthetic.QUESTION_TYPES)
    synthetic.write_jsonl_source(samples, folder)
    return folder, samples


def test_the_generator_asks_in_the_modules_vocabulary():
    assert synthetic.ANSWER_VOCABULARY is shapes.ANSWER_VOCABULARY
    words = {*synthetic.COLOURS, *synthetic.SHAPES, *synthetic.COUNTS.values()}
    assert words == set(shapes.ANSWER_VOCABULARY)


def test_loader_reads_a_written_split(split):
    folder, samples = split
    rows = load_benchmark("shapes", folder)
    assert rows["id"] == [sample["id"] for sample in samples]
    assert rows["answer"] == [sample["answer"] for sample in samples]
    assert rows[0]["image"].tobytes() == samples[0]["image"].convert("RGB").tobytes()
    (folder / "images" / f"{samples[1]['id']}.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"Image of shapes item '{samples[1]['id']}' not found"):
        load_benchmark("shapes", folder)


def test_gold_answers_in_free_text_score_one(split):
    folder, samples = split
    references = load_benchmark("shapes", folder, require_images=False).remove_columns(["image", "question"])
    predictions = [{"id": sample["id"], "prediction": f"It is {sample['answer']}."} for sample in samples]
    results = evaluate.load(module_path("shapes")).compute(predictions=predictions, references=references.to_list())
    assert results["accuracy"] == 1.0 and results["unparsed"] == 0
