"""The HTTP layer: decodes requests, calls ingestion and the store, encodes answers."""
