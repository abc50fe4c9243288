"""One thing ``check`` found wrong, said in one line: file, table, run, studies affected."""

from __future__ import annotations

from dataclasses import dataclass

SHOWN_STUDIES = 5
ROW_KINDS = ("duplicate", "overlap", "orphan")  # committed rows that break a promise: ``repair`` keeps them


@dataclass(frozen=True)
class Problem:
    # manifest | checkpoint | catalog | missing | size | footer | checksum | decode | schema; of the rows
    # (deep, ``warehouse.check_rows``): duplicate | overlap | orphan
    kind: str
    path: str  # relative to the warehouse root
    detail: str
    table: str | None = None
    run_id: str | None = None
    generation: int | None = None
    studies: tuple[str, ...] | None = None  # None: unknown
    at_least: bool = False  # ``studies`` is a lower bound (the file's own list is damaged)

    def line(self) -> str:
        parts = [f"{self.path}: {self.detail}"]
        if self.table:
            parts.append(f"table {self.table}")
        if self.run_id:
            parts.append(f"run {self.run_id}")
        if self.studies is not None:
            shown = ", ".join(self.studies[:SHOWN_STUDIES])
            more = f" and {len(self.studies) - SHOWN_STUDIES} more" if len(self.studies) > SHOWN_STUDIES else ""
            bound = "at least " if self.at_least else ""  # a lower bound is never empty
            parts.append(f"{bound}{len(self.studies)} studies affected ({shown}{more})" if self.studies
                         else "no studies affected")
        return "; ".join(parts)
