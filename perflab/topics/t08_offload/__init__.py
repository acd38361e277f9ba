"""Topic 08."""
