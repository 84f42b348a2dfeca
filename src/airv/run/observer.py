"""What a run tells whoever watches it (airv.run.pipeline.Run's `observer`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from airv.core.types import Unit
from airv.core.voting import Vote
from airv.run.rounds import View


class Observer:
    """What a run tells whoever watches it (the bench's timers and arrival times, a test's
    spy), each after the fact. The default watches nothing."""

    def planned(self, views: Sequence[View], seconds: float) -> None:
        """Views planned and queued (augment, fit, tokenize took `seconds`)."""

    def taken(self, results: int, seconds: float) -> None:
        """Finished results recorded (parse, reverse, log took `seconds`)."""

    def wrote(self, votes: Mapping[Unit, Vote], seconds: float) -> None:
        """submission.json rewritten from `votes`."""

    def engine_failed(self, why: str) -> None:
        """An engine lane's life ended early (the pool restarts it if its policy allows)."""
