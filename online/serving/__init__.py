"""Serving: one engine shared by the REST and gRPC servers and in-process callers."""
