"""Tests of the backends (test_ops.py: every op on the WebGPU backend; test_fused_ops.py: the fused
kernels and decoding loops; pairs.py: what they share)."""
