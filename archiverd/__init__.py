"""archiverd: an archive cache in front of VCS hosts."""

__version__ = "0.1.0"
