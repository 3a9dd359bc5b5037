"""Helpers every stage uses: safe file writes, figures, number formatting."""
