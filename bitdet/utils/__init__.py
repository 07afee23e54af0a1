"""Helpers that every part of bitdet shares: atomic file writes, the cache folder, the CPU's
name."""
