"""Online stores (embedded LMDB, Redis, Redis Cluster), the row codec and online lookups."""
