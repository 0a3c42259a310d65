"""eventkeep: a self-hosted, Mixpanel-compatible event store."""

__version__ = "0.1.0"
