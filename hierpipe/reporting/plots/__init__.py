"""Figures of an experiment: what to draw (plan), how to draw each kind, and rendering."""
