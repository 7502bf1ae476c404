"""Rendering: the run report (markdown and HTML with matplotlib plots) and the sweep's tables. It formats
results it is given and imports nothing of the experiments."""
