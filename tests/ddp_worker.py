"""Worker for tests/test_distributed.py: a few SGU steps from a fixed start, final weights saved by rank 0.

accelerate launch --num_processes 2 --cpu tests/ddp_worker.py OUT.pt PER_DEVICE_BATCH [METHOD]
"""

import sys

import torch

from sgu_llm.data.prompts import build_prompt
from sgu_llm.data.synthetic import synthetic_tofu
from sgu_llm.models import tiny_llama, train_tokenizer
from sgu_llm.trainers import get_method


def main(out_path: str, per_device: int, method: str = "sgu") -> None:
    splits = synthetic_tofu(num_authors=20, qa_per_author=10, seed=0)
    tok = train_tokenizer([build_prompt(r["question"]) + r["answer"] for r in splits["full"]], vocab_size=400)
    model = tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    config_cls, trainer_cls = get_method(method)
    args = config_cls(
        output_dir=out_path + ".run",
        overwrite_output_dir=True,
        report_to="none",
        per_device_train_batch_size=per_device,
        max_steps=3,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        use_cpu=True,
        lr_scheduler_type="constant",
        dataloader_drop_last=True,
    )
    trainer = trainer_cls(model, args, splits["forget10"], splits["retain90"], processing_class=tok)
    trainer.train()
    if trainer.is_world_process_zero():
        state = {
            k: v.detach().cpu()
            for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()
        }
        logs = [h for h in trainer.state.log_history if "loss" in h]
        torch.save({"state": state, "logs": logs}, out_path)
    # Tear the process group down before exit: a gloo group left alive can abort a rank at interpreter exit.
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "sgu")
