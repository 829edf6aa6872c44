"""Across runs: aggregate tables, statistics, comparisons, the paper table and the figures."""
