"""Ingestion: turning request payloads into validated, storable batches. No HTTP here."""
