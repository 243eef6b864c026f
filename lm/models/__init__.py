"""One file per model family, each built from `lm.layers`."""
