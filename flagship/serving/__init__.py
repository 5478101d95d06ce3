"""Serving: the compiled snapshot cache, sticky-aware evaluation, and their HTTP endpoints."""
