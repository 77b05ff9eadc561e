"""Moving an archive: upstream sources, the part cutter, the transfer."""
