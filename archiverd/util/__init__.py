"""Small mechanisms used across archiverd, one copy of each."""
