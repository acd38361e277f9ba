"""Topic 07."""
