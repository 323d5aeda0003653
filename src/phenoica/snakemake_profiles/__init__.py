"""Execution profiles shipped with phenoica (installed by ``phenoica profile install``)."""
