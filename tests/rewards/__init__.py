"""Tests of sspo_jax.rewards."""
