"""Topic 09."""
