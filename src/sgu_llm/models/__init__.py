"""Models: the tiny Llama and tokenizer built here, pretrained and `builtin:` models, the embedded benchmark's
fine-tuned target, retain and noise-floor models (cached, shipped), model checks and saved runs."""
