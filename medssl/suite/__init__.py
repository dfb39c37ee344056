"""Stage 1, the suite: loading a suite file or name, validating it against the schema, hashing configurations."""
