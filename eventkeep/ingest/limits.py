"""Mixpanel's documented ingestion limits (spec §2.2, §3.4)."""

MAX_EVENTS_PER_REQUEST = 2000
MAX_REQUEST_BYTES = 10 * 1024 * 1024  # uncompressed, after gzip and form decoding
MAX_EVENT_BYTES = 1024 * 1024  # "Each event must be smaller than 1MB of uncompressed JSON."
MAX_PROPERTIES = 255  # "fewer than 255 properties"
MAX_OBJECT_KEYS = 255  # nested objects: "fewer than 255 keys"
MAX_ARRAY_ELEMENTS = 255  # "fewer than 255 elements"
MAX_NESTING_DEPTH = 3
MAX_STRING_CHARS = 255  # longer strings and property names are truncated
MAX_INSERT_ID_BYTES = 36

# /track accepts only recent events; /import takes any time after 1971-01-01.
TRACK_MAX_AGE_MS = 5 * 24 * 3600 * 1000
MIN_TIME_MS = 31_536_000_000  # 1971-01-01T00:00:00Z
MAX_FUTURE_MS = 3600 * 1000  # up to an hour ahead is clamped to now, beyond is refused
MS_THRESHOLD = 10_000_000_000  # |time| above 1e10 is milliseconds, below is seconds

# Values Mixpanel refuses as distinct_id or $insert_id, compared case-insensitively.
DISALLOWED_IDS = frozenset(
    {
        "00000000-0000-0000-0000-000000000000",
        "anon",
        "anonymous",
        "nil",
        "none",
        "null",
        "n/a",
        "na",
        "undefined",
        "unknown",
        "<nil>",
        "0",
        "-1",
        "true",
        "false",
        "[]",
        "{}",
    }
)
