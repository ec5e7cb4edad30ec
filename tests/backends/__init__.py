"""Tests of the backends (test_ops.py: every op on the WebGPU backend)."""
