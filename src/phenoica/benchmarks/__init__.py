"""Benchmarks: held-out-batch generalization (``generalization``, figures in ``plots``),
cross-seed identifiability and synthetic disentanglement.

Submodules are imported on use (``from phenoica.benchmarks.generalization import ...``) so that
importing the package stays cheap.
"""
