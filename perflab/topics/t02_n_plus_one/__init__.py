"""Topic 02."""
