"""Tasks: one per archive being fetched, and how daemons share them."""
