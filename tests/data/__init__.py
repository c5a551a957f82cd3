"""Tests of sspo_jax.data."""
