"""Topic 05."""
