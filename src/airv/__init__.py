"""airv: augment, infer, reverse, vote — an offline Kaggle submission package for ARC-AGI."""

__version__ = "0.1.0"
