from typing import Any

def place(
    high: Any, low: Any, seq: Any, table_high: Any, table_low: Any, table_seq: Any, replaced: Any, used: int, /
) -> int: ...
def keys(
    project_ids: Any, event_offsets: Any, events: Any, id_offsets: Any, ids: Any, times_ms: Any,
    insert_offsets: Any, insert_ids: Any, high: Any, low: Any, /
) -> None: ...
