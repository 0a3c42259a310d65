"""Event stores: where validated batches are kept. They know nothing of HTTP."""

from eventkeep.store.base import EventStore, ScanQuery, StoreUnavailable

__all__ = ["EventStore", "ScanQuery", "StoreUnavailable"]
