"""The ARC-specific core: tasks, augmentations, formats, prompts, voting, submission."""
