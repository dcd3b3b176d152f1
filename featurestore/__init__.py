"""featurestore: one set of feature definitions for training sets and online serving."""
