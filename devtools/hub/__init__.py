"""Loopback HF/ModelScope hub and fixture generators for hpcft's tests."""
