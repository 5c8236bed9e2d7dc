"""Comparison tables, training curves and qualitative grids."""
