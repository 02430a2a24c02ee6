"""edgedf.devices: hardware target profiles, benchmarking and reports. Imports runtime, never torch."""

from .profiles import PRECISIONS, PROFILES, TargetProfile, get_profile

__all__ = ["PRECISIONS", "PROFILES", "TargetProfile", "get_profile"]
