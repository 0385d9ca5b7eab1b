"""Data I/O: safe image loading, dataset scanning, the manifest and the pixel cache."""
