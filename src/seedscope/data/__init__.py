"""The evaluation and training text: the embedded corpus with planted phenomena, or real text."""
