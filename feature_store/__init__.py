"""The feature contract (specs.yaml), append-only vocabularies and point-in-time retrieval."""
