"""The bottom layer: atomic files, the cache and its fingerprints, number formatting, and the losses as pure
tensor functions. It imports nothing else of sgu_llm."""
