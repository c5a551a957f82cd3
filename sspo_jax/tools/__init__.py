"""Tooling built on the core (multi-run comparisons): it imports the core, the core never imports it.

    sspo-jax compare configs/compare/equal_eps.yaml --jobs 2     # sspo_jax.tools.compare
"""
