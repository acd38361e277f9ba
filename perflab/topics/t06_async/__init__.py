"""Topic 06."""
