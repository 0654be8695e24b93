"""The science: one module per analysis (statistics, text summaries, figures), pure functions of arrays."""
