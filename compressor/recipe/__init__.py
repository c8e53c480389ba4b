"""Recipes as data: the schema, overlays and dotted overrides, and the GLUE task table."""
