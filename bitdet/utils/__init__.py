"""Helpers that every part of bitdet shares: atomic file writes and the cache folder."""
