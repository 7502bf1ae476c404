"""SGU on an image classifier through the same trainers (task="classification"): 8x8 digits, a small CNN."""

import pytest
import torch

pytest.importorskip(
    "sklearn", reason="the vision benchmark needs scikit-learn: pip install 'sgu-llm[vision]'"
)

from sgu_llm.experiments.vision import benchmark as vision  # noqa: E402
from sgu_llm.experiments.vision import data as vision_data  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    data = vision_data.load_digits_split()
    mask = vision_data.forget_mask(data, "class", seed=0, forget_class=0, fraction=0.1)
    original = vision_data.train_classifier(data.x_train, data.y_train, seed=0)
    retrained = vision_data.train_classifier(data.x_train[~mask], data.y_train[~mask], seed=0)
    return data, mask, original, retrained


MARGIN = 3.0  # percentage points: how far the kept classes may fall below the retrained model


@pytest.mark.parametrize("method", ["sgu_reverse", "gru"])
def test_class_forgetting_reaches_the_retrained_model(digits, tmp_path, method):
    """The forgotten class's accuracy drops to the retrained model's (which never saw it); the kept classes stay
    within MARGIN of the retrained model on the retain and test images."""
    data, mask, original, retrained = digits
    gold = vision_data.measure(retrained, data, mask, "class", 0)
    before = vision_data.measure(original, data, mask, "class", 0)
    assert (
        before["UA"] < 5 and gold["UA"] == 100
    )  # the original knows the class; the retrained one never predicts it
    model = vision.unlearn(
        original, method, data, mask, lr=1e-3, seed=0, epochs=5, batch_size=32, workdir=str(tmp_path)
    )
    after = vision_data.measure(model, data, mask, "class", 0)
    assert after["UA"] >= gold["UA"] - 5
    assert after["RA"] >= gold["RA"] - MARGIN
    assert after["TA"] >= gold["TA"] - MARGIN


def test_original_weights_untouched_and_only_the_loss_differs(digits, tmp_path):
    """Unlearning works on a copy, and the trainer scores a classification batch with per-example cross-entropy."""
    from sgu_llm.trainers.tasks import get_task

    data, mask, original, _ = digits
    before = {k: v.clone() for k, v in original.state_dict().items()}
    vision.unlearn(
        original, "sgu", data, mask, lr=1e-3, seed=0, epochs=1, batch_size=32, workdir=str(tmp_path)
    )
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())
    task = get_task("classification")
    batch = task.collate(vision_data.rows_of(data.x_train[:4], data.y_train[:4]))
    loss, units = task.example_losses(original, batch)
    ref = torch.nn.functional.cross_entropy(
        original(batch["pixel_values"]), batch["labels"], reduction="none"
    )
    assert torch.allclose(loss, ref) and units.tolist() == [1.0] * 4


def test_classification_rows_without_labels_are_refused(tmp_path):
    from sgu_llm.trainers import get_method

    config_cls, trainer_cls = get_method("sgu")
    config = config_cls(output_dir=str(tmp_path / "o"), report_to="none", use_cpu=True)
    rows = [{"pixel_values": torch.zeros(1, 8, 8)}]
    with pytest.raises(ValueError, match="'labels'"):
        trainer_cls(vision_data.DigitsCNN(), config, rows, rows, processing_class=None, task="classification")


def test_markdown_table_from_a_small_benchmark():
    """Every method's row carries its chosen learning rate and a gap; the retrained model has no gap."""
    result = vision.vision_benchmark(
        seeds=(0,), methods=("sgu", "graddiff"), learning_rates=(1e-3,), settings=("random",), epochs=1
    )
    rows = result["settings"]["random"]
    assert set(rows) == {"retrained", "original", "sgu", "graddiff"} and rows["sgu"]["lr"] == 1e-3
    table = vision.markdown(result)
    assert "| retrained | – |" in table and "**sgu**" in table and "graddiff" in table
