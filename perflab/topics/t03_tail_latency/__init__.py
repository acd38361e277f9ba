"""Topic 03."""
