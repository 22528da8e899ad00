"""Data sets: one in-memory type and loaders for the benchmark, RecBole and plain formats."""

from services.datasets.loaders import CatalogItem, Dataset, DatasetFormatError, Interaction, load_dataset

__all__ = ["CatalogItem", "Dataset", "DatasetFormatError", "Interaction", "load_dataset"]
