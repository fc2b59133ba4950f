"""Console scripts (demo, image player)."""
