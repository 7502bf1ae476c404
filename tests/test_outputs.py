"""Safe outputs: whole files or none, and no secret in anything a run writes."""

import json
import os

import pytest

from sgu_llm.core.files import atomic_dir, write_json, write_text

SECRET = "hf_SECRET_abc123"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json(str(path), {"forget_quality": 0.5})

    def broken(obj, **kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(json, "dumps", broken)
    with pytest.raises(RuntimeError):
        write_json(str(path), {"forget_quality": 0.9})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"forget_quality": 0.5}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_a_failed_folder_build_keeps_the_old_folder(tmp_path):
    target = tmp_path / "entry"
    atomic_dir(str(target), lambda d: write_text(os.path.join(d, "a.txt"), "old"))

    def half(d):
        write_text(os.path.join(d, "a.txt"), "new")
        raise KeyboardInterrupt  # killed half way

    with pytest.raises(KeyboardInterrupt):
        atomic_dir(str(target), half)
    assert (target / "a.txt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["entry"]


def test_no_token_in_any_file_a_training_run_writes(model, tokenizer, small_sets, make_config, tmp_path):
    from sgu_llm.trainers import SGUConfig, SGUTrainer

    forget, retain = small_sets
    cfg = make_config(
        SGUConfig, num_train_epochs=1, save_strategy="steps", save_steps=2, hub_token=SECRET, output_dir=str(tmp_path / "o")
    )
    trainer = SGUTrainer(model, cfg, forget, retain, processing_class=tokenizer)
    trainer.train()
    trainer.save_unlearned_model()
    assert trainer.args.hub_token == SECRET  # masked only while writing
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "o") for f in fs]
    assert any(f.endswith("training_args.bin") for f in files) and any("checkpoint-2" in f for f in files)
    for f in files:
        with open(f, "rb") as fh:
            assert SECRET.encode() not in fh.read(), f
