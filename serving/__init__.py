"""The gRPC feed service: candidate sources → feature hydration → ranker → value model → page."""
