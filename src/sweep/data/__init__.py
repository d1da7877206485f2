"""Data: read and check records (:mod:`records`), tokenize and batch (:mod:`batches`)."""
