"""``manual``: flushes only when asked (``db.flush()``, ``proxistore flush``); it owns no threshold."""
from __future__ import annotations

from typing import List, Optional

from proxistore.contracts import (CollectionState, DatabaseState, FlushPolicy, FlushRequest,
                                  ThresholdReading)


class ManualPolicy(FlushPolicy):
    def due(self, state: DatabaseState) -> List[FlushRequest]:
        return []

    def readings(self, state: DatabaseState, collection: str) -> List[ThresholdReading]:
        return []

    def request(self, state: CollectionState) -> Optional[FlushRequest]:
        return FlushRequest(state.name, self.name, None, None, state.memtable_bytes,
                            detail=f"explicit flush request ({state.memtable_rows} rows, "
                                   f"{state.memtable_bytes} bytes in memtable)")
