"""The demo model: synthetic tasks, test models, the trainer."""
