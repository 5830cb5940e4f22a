"""The classify API's requests waiting for the worker's next take.

HTTP handler -> :meth:`ClassifyRequests.submit` (a future per request; the scoring loop is woken)
-> the loop drains the waiting requests into records of :data:`API_TOPIC`, scores them with its
take (one model, one scorer thread) -> :meth:`answer` resolves each future with its results.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stream.core.classify_api import api_result
from stream.core.codec import HEADER_ERROR, HEADER_REASON, encode_json
from stream.core.pipeline import OutRecord, ScoredEvent
from stream.core.records import RawRecord

API_TOPIC = "<classify-api>"  # the origin of the API's texts inside a take; never a Kafka topic


@dataclass
class PendingClassify:
    ids: list[str]
    texts: list[str]
    answer: asyncio.Future[list[dict[str, object]]] = field(repr=False)


class ClassifyRequests:
    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._pending: list[PendingClassify] = []
        self._numbers = itertools.count()

    def submit(self, texts: Sequence[str]) -> asyncio.Future[list[dict[str, object]]]:
        number = next(self._numbers)
        future: asyncio.Future[list[dict[str, object]]] = asyncio.get_running_loop().create_future()
        ids = [f"api-{number}-{index}" for index in range(len(texts))]
        self._pending.append(PendingClassify(ids, list(texts), future))
        self._wake()
        return future

    def drain(self) -> list[PendingClassify]:
        """The requests still waiting (a cancelled one, whose client left, is dropped)."""
        taken = [request for request in self._pending if not request.answer.done()]
        self._pending = []
        return taken

    @staticmethod
    def records(requests: Sequence[PendingClassify], now_ms: int) -> list[RawRecord]:
        records = []
        offset = 0
        for request in requests:
            for message_id, text in zip(request.ids, request.texts, strict=True):
                records.append(
                    RawRecord(
                        value=encode_json({"id": message_id, "text": text}),
                        key=message_id.encode(), topic=API_TOPIC, partition=0, offset=offset,
                        timestamp_ms=now_ms,
                    )
                )  # fmt: skip
                offset += 1
        return records

    @staticmethod
    def answer(
        requests: Sequence[PendingClassify],
        events: Sequence[ScoredEvent],
        dead_letters: Sequence[OutRecord],
    ) -> None:
        by_id: dict[str, dict[str, object]] = {
            event.message.id: api_result(event.payload) for event in events
        }
        for dead in dead_letters:
            headers = dict(dead.headers)
            by_id[(dead.key or b"").decode()] = {"error": {
                "code": headers.get(HEADER_REASON, b"unknown").decode(),
                "message": headers.get(HEADER_ERROR, b"").decode(),
            }}  # fmt: skip
        for request in requests:
            if request.answer.done():
                continue
            missing: dict[str, object] = {
                "error": {"code": "not_scored", "message": "no result for this text"}
            }
            request.answer.set_result([by_id.get(i, missing) for i in request.ids])

    def fail(self, requests: Sequence[PendingClassify], exc: BaseException) -> None:
        for request in requests:
            if not request.answer.done():
                request.answer.set_exception(exc)
