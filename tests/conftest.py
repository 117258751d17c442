"""Settings shared by every test.

Hypothesis: machines here are shared and noisy (the CI host runs other tenants), so
"input generation is slow" and per-example deadlines measure the neighbours, not the
code. Property tests keep their example counts; they just do not fail on timing.
"""

from hypothesis import HealthCheck, settings

settings.register_profile("lifeline", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("lifeline")
