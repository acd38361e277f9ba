"""Topic 04."""
