"""Where answers are kept, internal: the SQLite cache file and the Redis cache."""
