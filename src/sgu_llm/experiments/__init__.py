"""The experiments a user runs: recipe parsing, `sgu-llm unlearn`, the benchmark run, the sweep, the vision
benchmark and the smaller commands. Each module builds on every layer below; nothing below imports it."""
