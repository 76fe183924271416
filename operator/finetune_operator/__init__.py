"""Kubernetes operator for FineTuneJob resources."""
