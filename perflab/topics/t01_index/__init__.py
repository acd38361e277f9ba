"""Topic 01."""
