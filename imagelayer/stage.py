"""An in-order worker thread with bounded backlog, for the streaming pipelines.

hashlib, zlib, zstd and file writes release the GIL, so a :class:`Stage` running them
overlaps with the Python code that produces the data (the tar writer, the layer reader).
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Generic, Optional, TypeVar

T = TypeVar("T")


class Stage(Generic[T]):
    """One worker thread calling ``fn`` on each submitted item, in order; at most ``depth``
    items outstanding (:meth:`submit` blocks). An error in ``fn`` is raised by the next
    :meth:`submit`, or kept in ``error`` for the owner to raise after :meth:`close`."""

    def __init__(self, name: str, fn: Callable[[T], object], depth: int) -> None:
        self.fn = fn
        self.queue: "queue.SimpleQueue[Optional[T]]" = queue.SimpleQueue()
        self.slots = threading.Semaphore(depth)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        get = self.queue.get
        while True:
            item = get()
            if item is None:
                return
            if self.error is None:
                try:
                    self.fn(item)
                except BaseException as exc:  # handed to the producer
                    self.error = exc
            self.slots.release()

    def submit(self, data: T) -> None:
        self.slots.acquire()
        if self.error is not None:
            raise self.error
        self.queue.put(data)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
