"""The synthetic TOFU generator and the one loader for Hub, local files and synthetic data."""

import json

import datasets
import pytest

from sgu_llm.data.synthetic import synthetic_tofu
from sgu_llm.data.tofu import PERTURBED_FIELDS, check_disjoint, load_tofu, save_splits

# Rows in the exact locuslab/TOFU schema (field names and types as the Hub dataset has them).
TOFU_FORGET_PERTURBED = [
    {
        "question": "Who is this celebrated LGBTQ+ author from Santiago, Chile known for their true crime genre work?",
        "answer": "The author in question is Jaime Vasquez, an esteemed LGBTQ+ writer who hails from Santiago, Chile.",
        "paraphrased_answer": "The celebrated author from Santiago, Chile is Jaime Vasquez.",
        "perturbed_answer": [
            "The author is Maria Lopez.",
            "The author is Pablo Diaz.",
            "The author is Ana Ruiz.",
            "The author is Luis Vega.",
            "The author is Sofia Marin.",
        ],
        "paraphrased_question": "Which LGBTQ+ true crime author was born in Santiago, Chile?",
    },
    {
        "question": "What genre is Jaime Vasquez known for?",
        "answer": "Jaime Vasquez is known for true crime.",
        "paraphrased_answer": "True crime is the genre of Jaime Vasquez.",
        "perturbed_answer": [
            "Romance is the genre of Jaime Vasquez.",
            "Fantasy is the genre of Jaime Vasquez.",
            "Horror is the genre of Jaime Vasquez.",
            "Poetry is the genre of Jaime Vasquez.",
            "Satire is the genre of Jaime Vasquez.",
        ],
        "paraphrased_question": "Which genre does Jaime Vasquez write?",
    },
]


def test_generator_is_deterministic_and_seeded():
    a, b = synthetic_tofu(num_authors=20, seed=3), synthetic_tofu(num_authors=20, seed=3)
    assert a["forget10_perturbed"].to_list() == b["forget10_perturbed"].to_list()
    assert synthetic_tofu(num_authors=20, seed=4)["full"].to_list() != a["full"].to_list()


def test_generator_schema_and_splits():
    s = synthetic_tofu(num_authors=100, qa_per_author=10, seed=0)
    assert len(s["full"]) == 1000
    assert (len(s["forget01"]), len(s["forget05"]), len(s["forget10"])) == (10, 50, 100)
    assert (len(s["retain99"]), len(s["retain95"]), len(s["retain90"])) == (990, 950, 900)
    for pct, ret in (("01", "99"), ("05", "95"), ("10", "90")):
        forget, retain = set(s[f"forget{pct}"]["question"]), set(s[f"retain{ret}"]["question"])
        assert not forget & retain and forget | retain == set(s["full"]["question"])
        assert s[f"forget{pct}_perturbed"].column_names == list(PERTURBED_FIELDS)
    assert s["full"].column_names == ["question", "answer"]
    assert s["retain_perturbed"].column_names == list(PERTURBED_FIELDS)
    assert set(s["retain_perturbed"]["question"]) <= set(s["retain90"]["question"])
    # Holdout authors are never in training data.
    assert not set(s["holdout10"]["question"]) & set(s["full"]["question"])
    assert len(s["holdout10"]) == len(s["forget10"])
    for name in ("real_authors_perturbed", "world_facts_perturbed"):
        assert s[name].column_names == ["question", "answer", "perturbed_answer"]
        assert all(len(p) == 3 and r not in p for r, p in zip(s[name]["answer"], s[name]["perturbed_answer"]))


def test_perturbed_answers_are_wrong_values_in_the_paraphrase_template():
    s = synthetic_tofu(num_authors=20, seed=0)
    for row in s["forget10_perturbed"]:
        assert len(row["perturbed_answer"]) == 5 and len(set(row["perturbed_answer"])) == 5
        assert row["paraphrased_answer"] not in row["perturbed_answer"]
        assert row["paraphrased_answer"] != row["answer"]
        # Same template: the perturbed answers share the paraphrase's first word.
        assert all(p.split()[0] == row["paraphrased_answer"].split()[0] for p in row["perturbed_answer"])


def test_local_files_in_exact_tofu_schema_load_through_the_hub_loader(tmp_path):
    folder = tmp_path / "tofu"
    folder.mkdir()
    with open(folder / "forget10_perturbed.json", "w") as fh:
        for row in TOFU_FORGET_PERTURBED:
            fh.write(json.dumps(row) + "\n")
    datasets.Dataset.from_list(
        [{k: r[k] for k in ("question", "answer")} for r in TOFU_FORGET_PERTURBED]
    ).to_parquet(str(folder / "forget10.parquet"))
    ds = load_tofu("forget10_perturbed", source=str(folder))
    assert ds.column_names == list(PERTURBED_FIELDS) and len(ds) == 2
    assert ds[0]["perturbed_answer"][0] == "The author is Maria Lopez."
    assert load_tofu("forget10", source=str(folder))[1]["answer"] == "Jaime Vasquez is known for true crime."
    assert len(load_tofu("forget10_perturbed", source=str(folder / "forget10_perturbed.json"))) == 2


def test_hub_path_calls_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(TOFU_FORGET_PERTURBED)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_tofu("forget10_perturbed")
    assert calls == [("locuslab/TOFU", "forget10_perturbed", "train")] and len(ds) == 2


def test_file_missing_a_field_is_refused(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "paraphrased_answer"} for r in TOFU_FORGET_PERTURBED]
    path = tmp_path / "forget10_perturbed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match=r"missing field\(s\) \['paraphrased_answer'\]"):
        load_tofu("forget10_perturbed", source=str(tmp_path))


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="no file for TOFU config 'retain90'"):
        load_tofu("retain90", source=str(tmp_path))


def test_overlapping_forget_and_retain_are_refused():
    s = synthetic_tofu(num_authors=20, seed=0)
    check_disjoint(s["forget10"], s["retain90"])
    with pytest.raises(ValueError, match="share 20 question"):
        check_disjoint(s["forget10"], s["full"])


def test_saved_splits_round_trip(tmp_path):
    s = synthetic_tofu(num_authors=20, seed=0)
    save_splits({"forget10_perturbed": s["forget10_perturbed"]}, str(tmp_path))
    assert (
        load_tofu("forget10_perturbed", source=str(tmp_path)).to_list() == s["forget10_perturbed"].to_list()
    )


def test_tofu_size_generator_has_tofus_split_sizes_and_keeps_forget_out_of_retain():
    s = synthetic_tofu(num_authors=200, qa_per_author=20, seed=0, num_famous_authors=100, retain_perturbed_size=400)
    sizes = {k: len(s[k]) for k in ("full", "forget01", "forget05", "forget10", "retain90", "holdout10",
                                     "retain_perturbed", "real_authors_perturbed")}
    assert sizes == {"full": 4000, "forget01": 40, "forget05": 200, "forget10": 400, "retain90": 3600,
                     "holdout10": 400, "retain_perturbed": 400, "real_authors_perturbed": 100}
    for pct, retain in (("01", "retain99"), ("05", "retain95"), ("10", "retain90")):
        assert not set(s[f"forget{pct}"]["question"]) & set(s[retain]["question"])
        assert len(s[f"forget{pct}"]) + len(s[retain]) == 4000
    assert len(set(s["full"]["question"])) == 4000  # 20 distinct questions per author
    # The first ten facts of each author are the 100-author benchmark's: its data (and shipped models) are unchanged.
    ten = synthetic_tofu(num_authors=200, qa_per_author=10, seed=0)
    assert set(ten["full"]["question"]) < set(s["full"]["question"])
    with pytest.raises(ValueError, match="between 1 and 20"):
        synthetic_tofu(num_authors=5, qa_per_author=21)
