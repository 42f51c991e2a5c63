"""The `feed` command line: the one entry package, above every other (nothing imports it)."""
