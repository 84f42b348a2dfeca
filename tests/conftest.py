"""Shared test settings and fixtures."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# No per-example time limit: a timing assert in disguise on a shared, noisy 2-core machine.
settings.register_profile(
    "airv", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "airv"))
