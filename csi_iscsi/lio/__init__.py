"""Target-side operations: the LIO objects that export a volume (driven through rtslib-fb)."""
