"""`sgu-llm vision`: SGU and the baselines on an image classifier (8x8 digits), through the same trainers."""

from __future__ import annotations

from sgu_llm.experiments.vision.benchmark import METHODS, main, markdown, vision_benchmark

__all__ = ["METHODS", "main", "markdown", "vision_benchmark"]
