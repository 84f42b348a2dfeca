"""Kaggle: input discovery, environment detection, the local stand-in, the kernel build."""
