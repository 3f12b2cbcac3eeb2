"""Scan: a model-free audit of every row of a dataset, in bounded memory (``gradscope.scan.dataset``)."""

from gradscope.scan.dataset import scan

__all__ = ["scan"]
