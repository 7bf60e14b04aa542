"""Recipes: scripts that build a whole example (data, models, bundles, device config)
from the project's own commands."""
