"""Our TOFU metrics next to the reference framework's (open-unlearning) own metric functions, on one model.

The reference framework's functions are imported from a local checkout (a folder holding its `src/`), never
copied here. Two stubs, written to a temporary folder, let them import without its evaluation harness: an
`evals` package whose `__init__` is empty (the real one imports `lm_eval`) and, when `omegaconf` is not
installed, an `omegaconf` with `DictConfig` and `OmegaConf.to_container`.

    python scripts/reference_metrics.py --open_unlearning /path/to/open-unlearning \\
        [--recipe recipes/tiny-tofu/sgu.yaml] [--model target] [--rows 40]

The recipe gives the benchmark data, the tokenizer and the target and retain models, found as `sgu-llm run`
finds them (cache, then the models the package ships). `--model` is `target` (default), `retain`,
`noise_floor` or the folder of a saved model, e.g. `<run folder>/unlearned` of a finished `sgu-llm run` of
that recipe. Forget quality and privleak compare it with the recipe's retain model. `--rows N` keeps the
first N rows of each evaluation set.

Prints one table, `metric | ours | theirs (our masking) | theirs (their masking) | |diff|`:

- ours: `sgu_llm.evaluation.evaluate_model`, as `sgu-llm run` reports it;
- theirs (our masking): their metric functions on our tokenised rows (`tokenize_qa`) and our generation
  prompt, which isolates how they compute;
- theirs (their masking): their functions on rows from their `preprocess_chat_instance` with their template
  for the recipe's prompt format (`configs/model/phi-1_5.yaml` for `phi`), as their evaluation runs;
- |diff|: |ours - theirs (our masking)|.

Then a few lines on the conventions behind the differences (first answer tokens dropped, rows whose truth
ratio moves with the 1e-10). `docs/metrics.md` explains each convention.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Any

OMEGACONF_STUB = '''"""Stub of omegaconf for the reference framework's metric functions (scripts/reference_metrics.py)."""
DictConfig = dict


class OmegaConf:
    @staticmethod
    def to_container(cfg, resolve=True):
        return dict(cfg)
'''

# Their templates (configs/model/*.yaml `template_args`), used when the checkout has no configs/ folder.
TEMPLATES = {
    "phi": ("phi-1_5.yaml", {"apply_chat_template": False, "user_start_tag": "Question: ", "user_end_tag": "\n",
                             "asst_start_tag": "Answer: ", "asst_end_tag": "\n\n"}),
    "llama2": ("Llama-2-7b-chat-hf.yaml", {"apply_chat_template": False, "user_start_tag": "[INST] ",
                                           "user_end_tag": " [/INST]", "asst_start_tag": "", "asst_end_tag": " "}),
}
GENERATION = {"do_sample": False, "top_p": None, "temperature": None, "max_new_tokens": 200, "use_cache": True}
MASKINGS = ("ours", "theirs")


def scratch(prefix: str) -> str:
    """A temporary folder, removed when the script exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def import_reference(root: str) -> SimpleNamespace:
    """Their metric functions from the checkout at `root` (a folder with `src/evals` and `src/data`)."""
    src = os.path.join(os.path.abspath(root), "src")
    if not os.path.isdir(os.path.join(src, "evals", "metrics")):
        raise SystemExit(f"--open_unlearning {root!r}: no src/evals/metrics there (give the checkout's root)")
    stubs = scratch("ou-stubs-")
    os.makedirs(os.path.join(stubs, "evals"))
    with open(os.path.join(stubs, "evals", "__init__.py"), "w") as fh:
        # The package's modules come from the checkout; only its __init__ (which imports lm_eval) is skipped.
        fh.write(f"__path__ = [{os.path.join(src, 'evals')!r}]\n")
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        os.makedirs(os.path.join(stubs, "omegaconf"))
        with open(os.path.join(stubs, "omegaconf", "__init__.py"), "w") as fh:
            fh.write(OMEGACONF_STUB)
    sys.path[:0] = [stubs, src]
    from data.collators import DataCollatorForSupervisedDataset
    from data.utils import preprocess_chat_instance
    from evals.metrics import METRICS_REGISTRY
    from evals.metrics.mia import LOSSAttack, MinKPlusPlusAttack, MinKProbAttack, ZLIBAttack
    from evals.metrics.mia.utils import mia_auc
    from omegaconf import OmegaConf

    fn = {name: METRICS_REGISTRY[name]._metric_fn for name in
          ("probability", "probability_w_options", "truth_ratio", "rouge", "ks_test", "privleak", "hm_aggregate")}
    return SimpleNamespace(
        root=os.path.abspath(root), preprocess=preprocess_chat_instance, collator=DataCollatorForSupervisedDataset,
        mia_auc=mia_auc, fn=fn,
        # name: (attack class, whether it takes the tokenizer; the others take Min-K's k)
        attacks={"loss": (LOSSAttack, False), "zlib": (ZLIBAttack, True), "mink": (MinKProbAttack, False),
                 "minkpp": (MinKPlusPlusAttack, False)},
        config=getattr(OmegaConf, "create", dict),  # what their generation_args are (a DictConfig, or the stub's dict)
    )


def their_yaml(root: str, *parts: str) -> dict | None:
    import yaml

    path = os.path.join(root, "configs", *parts)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return yaml.safe_load(fh)


def their_template(root: str, prompt_format: str, system_prompt: str | None) -> dict:
    """Their `template_args` for our prompt format (a chat template: theirs with our system prompt)."""
    if prompt_format == "chat_template":
        return {"apply_chat_template": True, "system_prompt": system_prompt}
    name, default = TEMPLATES[prompt_format]
    cfg = their_yaml(root, "model", name)
    return dict(cfg["template_args"]) if cfg else default


class ListChatTemplate:
    """A tokenizer whose `apply_chat_template(tokenize=True)` returns a list of ids (transformers 4, which the
    reference framework pins), not a dict (transformers 5's default)."""

    def __init__(self, tokenizer: Any):
        self._tok = tokenizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self._tok(*args, **kw)

    def apply_chat_template(self, *args: Any, **kw: Any) -> Any:
        if kw.get("tokenize", True):
            kw.setdefault("return_dict", False)
        return self._tok.apply_chat_template(*args, **kw)


class Rows:
    """Rows in their dataset item format (tensors plus `index`) under our masking or theirs."""

    def __init__(self, ref: SimpleNamespace, tokenizer: Any, kw: dict, template: dict, max_length: int = 512):
        self.ref, self.tok, self.kw, self.template, self.max_length = ref, tokenizer, kw, template, max_length
        self.their_tok = ListChatTemplate(tokenizer) if template["apply_chat_template"] else tokenizer

    def one(self, q: str, a: str, masking: str, generate: bool = False) -> dict:
        import torch

        from sgu_llm.data.prompts import build_prompt, tokenize_qa

        if masking == "theirs":
            return self.ref.preprocess(self.their_tok, self.template, [q], [a], self.max_length, generate)
        fmt, system = self.kw["prompt_format"], self.kw["system_prompt"]
        row = tokenize_qa(self.tok, q, a, fmt, self.max_length, system)
        if not generate:
            return {k: torch.tensor(v) for k, v in row.items()}
        # As `suite.generate_answers` prompts; labels hold the whole sequence, as theirs do when generating.
        prompt = self.tok(build_prompt(q, self.tok, fmt, system).rstrip(" "),
                          add_special_tokens=fmt != "chat_template")["input_ids"]
        return {"input_ids": torch.tensor(prompt), "labels": torch.tensor(row["input_ids"]),
                "attention_mask": torch.ones(len(prompt), dtype=torch.long)}

    def qa(self, ds: Any, answer_key: str, masking: str, generate: bool = False) -> list[dict]:
        """One item per row; a list-valued answer column gives their multi-answer items ({0: row, 1: row, ...})."""
        out = []
        for i, r in enumerate(ds):
            ans = r[answer_key]
            if isinstance(ans, list):
                k = len(ds[0][answer_key])  # as ours: the first row's count
                out.append({j: self.one(r["question"], a, masking) | {"index": i} for j, a in enumerate(ans[:k])})
            else:
                out.append(self.one(r["question"], ans, masking, generate) | {"index": i})
        return out


def quiet(f: Any, *args: Any, **kw: Any) -> Any:
    """Call one of their functions without its prints ("Evaluated N examples")."""
    with contextlib.redirect_stdout(io.StringIO()):
        return f(*args, **kw)


def their_evaluation(ref: SimpleNamespace, model: Any, rows: Rows, sets: dict, masking: str, batch_size: int,
                     generation: dict | None, min_k: float) -> dict:
    """Their metrics of one model under one masking: the TOFU aggregates (with `generation`: ROUGE and model
    utility too), per-row forget truth ratios, the attacks' AUCs, and what the masking did to the rows."""
    fn = ref.fn
    right, left = ref.collator(rows.tok, "right", index="index"), ref.collator(rows.tok, "left", index="index")

    def prob(items: list) -> dict:
        return quiet(fn["probability"], model, data=items, collators=right, batch_size=batch_size)

    out: dict[str, Any] = {}
    for split, ds in sets.items():
        if split == "holdout" or (generation is None and split != "forget"):
            continue
        ans_items = rows.qa(ds, "answer", masking)
        ans, wrong = prob(ans_items), prob(rows.qa(ds, "perturbed_answer", masking))
        if split in ("forget", "retain"):
            out[f"{split}_prob"] = float(ans["agg_value"])
            correct = prob(rows.qa(ds, "paraphrased_answer", masking))
        else:
            normalised = fn["probability_w_options"](model, pre_compute={"correct": ans, "wrong": wrong})
            out[f"{split}_prob"] = float(normalised["agg_value"])
            correct = ans
        aggregator = "closer_to_1_better" if split == "forget" else "true_better"
        tr = fn["truth_ratio"](model, aggregator=aggregator, pre_compute={"correct": correct, "wrong": wrong})
        out[f"{split}_truth_ratio"] = float(tr["agg_value"])
        if split == "forget":
            out["forget_tr"] = tr
            out["forget_tr_rows"] = [v["score"] for v in tr["value_by_index"].values()]
            out["forget_p_correct"] = [v["prob"] for v in correct["value_by_index"].values()]
            out["answer_tokens"] = [int((it["labels"] != -100).sum()) for it in ans_items]
        if generation is not None:
            gen_items = rows.qa(ds, "answer", masking, generate=True)
            rouge = quiet(fn["rouge"], model, tokenizer=rows.tok, data=gen_items, collators=left, batch_size=batch_size,
                          generation_args=ref.config(dict(generation)), rouge_type="rougeL_recall")
            out[f"{split}_rouge"] = float(rouge["agg_value"])
            if split == "forget":
                gts = [v["ground_truth"] for v in rouge["value_by_index"].values()]
                out["ground_truth_mismatch"] = sum(g != a.strip() for g, a in zip(gts, ds["answer"]))
                last = [rows.tok.convert_ids_to_tokens(int(it["input_ids"][-1])) for it in gen_items]
                out["prompt_ends_in_space_token"] = sum(t in ("▁", "Ġ", " ") for t in last)
    if generation is not None:
        from sgu_llm.evaluation.metrics import MODEL_UTILITY_KEYS

        out["model_utility"] = float(fn["hm_aggregate"](model, pre_compute={k: {"agg_value": out[k]}
                                                                           for k in MODEL_UTILITY_KEYS})["agg_value"])
    if "holdout" in sets:
        data = {"forget": rows.qa(sets["forget"], "answer", masking), "holdout": rows.qa(sets["holdout"], "answer", masking)}
        for name, (cls, takes_tokenizer) in ref.attacks.items():
            kw = {"tokenizer": rows.tok} if takes_tokenizer else {"k": min_k}
            out[f"mia_{name}_auc"] = float(quiet(ref.mia_auc, cls, model, data, right, batch_size, **kw)["auc"])
    return out


def reference_values(ref: SimpleNamespace, mine: dict, retain: dict) -> None:
    """Forget quality and privleak of `mine` against the retain model's results, with their functions."""
    fq = ref.fn["ks_test"](None, pre_compute={"forget": mine["forget_tr"]},
                           reference_logs={"retain_model_logs": {"retain": retain["forget_tr"]}})
    mine["forget_quality"] = float(fq["agg_value"])
    for attack in ("mink", "minkpp"):
        if f"mia_{attack}_auc" in mine:
            pl = ref.fn["privleak"](None, pre_compute={"forget": {"agg_value": mine[f"mia_{attack}_auc"]}},
                                    reference_logs={"retain_model_logs": {"retain": {"agg_value": retain[f"mia_{attack}_auc"]}}},
                                    ref_value=0.5)
            mine[f"privleak_{attack}"] = float(pl["agg_value"])


def num(x: Any) -> str:
    return "–" if x is None else f"{x:.4g}"


def table(ours: dict, ours_rows: dict, theirs: dict[str, dict], generate: bool) -> list[list[str]]:
    keys = ["forget_prob", "forget_truth_ratio", "forget_quality"]
    if generate:
        keys += ["forget_rouge"]
        keys += [f"{s}_{m}" for s in ("retain", "real_authors", "world_facts") for m in ("prob", "rouge", "truth_ratio")]
        keys += ["model_utility"]
    keys += [k for k in ("mia_loss_auc", "mia_zlib_auc", "mia_mink_auc", "mia_minkpp_auc", "privleak_mink",
                         "privleak_minkpp") if k in ours]
    rows = []
    for k in keys:
        a, b, c = ours.get(k), theirs["ours"].get(k), theirs["theirs"].get(k)
        name = {"privleak_mink": "privleak (Min-K%)", "privleak_minkpp": "privleak (Min-K%++)"}.get(k, k)
        rows.append([name, num(a), num(b), num(c), "–" if a is None or b is None else f"{abs(a - b):.2g}"])
    # The forget row whose truth ratio the 1e-10 moves most (relative), ours without it, theirs with it.
    import numpy as np

    r_ours, r_theirs = np.asarray(ours_rows["truth_ratio"]), np.asarray(theirs["ours"]["forget_tr_rows"])
    i = int(np.argmax(np.abs(r_theirs - r_ours) / r_ours))
    rows.append([f"forget truth ratio, row {i}", num(r_ours[i]), num(r_theirs[i]),
                 num(theirs["theirs"]["forget_tr_rows"][i]), f"{abs(r_ours[i] - r_theirs[i]):.2g}"])
    return rows


def notes(ours_rows: dict, theirs: dict[str, dict], generate: bool) -> list[str]:
    import numpy as np

    t_ours, t_theirs = theirs["ours"], theirs["theirs"]
    r_ours, r_theirs = np.asarray(ours_rows["truth_ratio"]), np.asarray(t_ours["forget_tr_rows"])
    moved = np.abs(r_theirs - r_ours) / r_ours > 1e-3
    pc = np.asarray(t_ours["forget_p_correct"])
    n = len(r_ours)
    dropped = sum(t < o for t, o in zip(t_theirs["answer_tokens"], t_ours["answer_tokens"]))
    lines = [
        f"- their masking scores fewer answer tokens than ours on {dropped} of {n} forget rows "
        f"(the first answer token: a prompt tokenised alone ends in a separate space token).",
        f"- forget truth ratio rows moved by more than 0.1 % by their 1e-10: {int(moved.sum())} of {n}; "
        f"rows with P(correct) below 1e-9: {int((pc < 1e-9).sum())} (smallest P(correct) {pc.min():.3g}).",
    ]
    if generate:
        lines.append(
            f"- their generation prompt ends in a lone space token on {t_theirs['prompt_ends_in_space_token']} of {n} "
            f"forget rows (ours: {t_ours['prompt_ends_in_space_token']}); ROUGE references rebuilt by their "
            f"decode-and-replace that differ from the dataset's answer: {t_ours['ground_truth_mismatch']} (our "
            f"masking), {t_theirs['ground_truth_mismatch']} (theirs)."
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--open_unlearning", required=True,
                    help="Root of a local open-unlearning checkout (the folder holding its src/ and configs/).")
    ap.add_argument("--recipe", default="recipes/tiny-tofu/sgu.yaml", help="The recipe giving data and models.")
    ap.add_argument("--model", default="target",
                    help="target, retain, noise_floor, or the folder of a saved model (e.g. RUN/unlearned).")
    ap.add_argument("--rows", type=int, default=None, help="Keep the first N rows of each evaluation set.")
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--no_generate", action="store_true", help="Skip generation (ROUGE and model utility).")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own).")
    a = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # their progress bars
    os.environ.setdefault("SGU_LLM_QUIET", "1")
    start = time.perf_counter()

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    ref = import_reference(a.open_unlearning)

    from sgu_llm.data.benchmark import eval_sets, load_benchmark_data
    from sgu_llm.evaluation import evaluate_model
    from sgu_llm.evaluation.suite import MIN_K
    from sgu_llm.experiments.config import parse_args
    from sgu_llm.experiments.shared import eval_kwargs
    from sgu_llm.models.benchmark import benchmark_models
    from sgu_llm.models.saved import load_saved_model

    recipe = parse_args(["--config", a.recipe, "--output_dir", scratch("refm-run-")])
    data = load_benchmark_data(recipe.script)
    if a.model in ("target", "retain", "noise_floor"):
        roles: tuple[str, ...] = tuple(dict.fromkeys((a.model, "retain")))
    elif os.path.isdir(a.model):
        roles = ("retain",)
    else:
        raise SystemExit(f"--model {a.model!r}: not target, retain, noise_floor or a saved model's folder")
    tokenizer, models, _ = benchmark_models(data, recipe.bench, roles=roles, prompt_format=recipe.config.prompt_format,
                                            base=recipe.model)
    model = models[a.model] if a.model in models else load_saved_model(a.model)[0]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, retain = model.to(device).eval(), models["retain"].to(device).eval()
    sets = eval_sets(data)
    if a.rows:
        sets = {k: ds.select(range(min(a.rows, len(ds)))) for k, ds in sets.items()}
    kw = eval_kwargs(recipe.config, recipe.evaluation)
    generate = not a.no_generate

    ours_ref = evaluate_model(retain, tokenizer, sets, generate=False, **kw)  # truth ratios and AUCs are enough
    ours = evaluate_model(model, tokenizer, sets, reference=ours_ref, generate=generate, **kw)

    template = their_template(ref.root, kw["prompt_format"], kw["system_prompt"])
    generation = dict(their_yaml(ref.root, "generation", "default.yaml") or GENERATION) if generate else None
    rows = Rows(ref, tokenizer, kw, template)
    theirs = {}
    for masking in MASKINGS:
        mine = their_evaluation(ref, model, rows, sets, masking, a.batch_size, generation, MIN_K)
        ret = their_evaluation(ref, retain, rows, {k: sets[k] for k in ("forget", "holdout") if k in sets}, masking,
                               a.batch_size, None, MIN_K)
        reference_values(ref, mine, ret)
        theirs[masking] = mine

    from sgu_llm.report.page import md_table

    n = {k: len(ds) for k, ds in sets.items()}
    print(f"{a.model} of {a.recipe} against its retain model; rows per set {n}; prompt format {kw['prompt_format']}; "
          f"their template {template}; reference framework at {ref.root}\n")
    print(md_table(["metric", "ours", "theirs (our masking)", "theirs (their masking)", "|diff|"],
                   table(ours["aggregates"], ours["per_example"]["forget"], theirs, generate)))
    print("\n|diff| is ours against theirs on our masking.")
    print("\n".join(notes(ours["per_example"]["forget"], theirs, generate)))
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
