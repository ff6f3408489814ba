"""proxistore package."""
