"""archiverd-fetch and safe extraction: the client, with no Twisted in it."""
