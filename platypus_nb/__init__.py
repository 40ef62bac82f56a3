"""platypus-nb: the Platypus paper (arXiv 2308.07317) as parameterised notebooks over a thin helper module."""

__version__ = "0.1.0"
