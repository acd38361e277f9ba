"""Topic 10."""
