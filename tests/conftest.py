"""Settings for the whole suite, in one place.

Hypothesis: one profile, "ci", for every run (CI and developers alike). The suite runs
on loaded 2-core machines next to Elasticsearch and real peers, where a test's
wall-clock time says nothing about the code: the per-example deadline is off and the
too_slow health check is suppressed here, never per test. (`test_link_format_round_trip`
once failed with FailedHealthCheck too_slow while other load ran.) The example
counts stay at Hypothesis' defaults unless a test asks for more. Select another
registered profile with HYPOTHESIS_PROFILE.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
