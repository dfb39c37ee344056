"""Stage 5, records: the result store and the provenance every record carries."""
