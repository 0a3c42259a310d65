from typing import Any

def place(
    high: Any, low: Any, seq: Any, table_high: Any, table_low: Any, table_seq: Any, replaced: Any, used: int, /
) -> int: ...
