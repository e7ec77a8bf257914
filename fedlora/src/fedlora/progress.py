"""Progress bars per round and per client (rich), silent when disabled."""
from __future__ import annotations

from typing import Iterable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from fedlora.records import RoundRecord


class Progress:
    def __init__(self, enabled: bool = True, console: Console | None = None, label: str = ""):
        self.enabled = enabled
        self.label = label
        self._bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=console or Console(stderr=True), transient=False,
        ) if enabled else None

    def rounds(self, rounds: Iterable[int], total: int) -> Iterator[int]:
        rounds = list(rounds)
        if not self._bar:
            yield from rounds
            return
        with self._bar:
            self._round_task = self._bar.add_task(f"{self.label} rounds", total=total,
                                                  completed=total - len(rounds), info="")
            for r in rounds:
                yield r
                self._bar.advance(self._round_task)

    def clients(self, clients: list[int], round_idx: int) -> Iterator[int]:
        if not self._bar:
            yield from clients
            return
        task = self._bar.add_task(f"  round {round_idx} clients", total=len(clients), info="")
        for k in clients:
            self._bar.update(task, info=f"client {k}")
            yield k
            self._bar.advance(task)
        self._bar.remove_task(task)

    def report(self, record: RoundRecord) -> None:
        if self._bar and record.evaluated:
            info = f"acc {record.accuracy:.3f} loss {record.loss:.4f}"
            overlap = record.geometry_value("basis_overlap")
            if overlap is not None:
                info += f" overlap {overlap:.4f}"
            self._bar.update(self._round_task, info=info)
