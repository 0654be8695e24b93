"""seedscope: how much do language-model training runs that differ only in their seed differ?"""

__version__ = "0.1.0"
