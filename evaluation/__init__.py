"""Offline evaluation: ranking and classification metrics (later: A/B analysis, off-policy estimates)."""
