"""The `elasticsearch` sink: one `_bulk` call per batch, judged per item.

Strategy (DESIGN.md "Storage"; the model is Vector's elasticsearch sink):

- One `AsyncElasticsearch` per worker; its connection pool is reused by every call.
  The client's own retries are off: this module decides what to retry, and a
  connection error must fail fast instead of being retried into a pile-up.
- A batch is serialised once, with orjson, into NDJSON `create` actions whose `_id`
  is the event's deterministic id; a retry (ours, the device's, another replica's)
  therefore can never make a second document: the second `create` answers 409, which
  this sink reports as DUPLICATE (success for the device). A 409 under a client `id`
  may also be a reused key with other content: those items are read back with one
  `mget` per batch and compared (`Event.reading`, `Event.same_time`); other content is
  CONFLICT (4.09) and the stored document stays. Ids are unique per daily index only,
  so two events under one client id whose times fall on different UTC days are two
  documents: no conflict is seen (README "Ids and duplicates"). Items are acknowledged by
  Elasticsearch only after the translog is fsynced (`index.translog.durability:
  request`, the default), so STORED means durable.
- Each item is judged on its own status by `classify` (a pure function): 201 stored,
  409 duplicate, 400 rejected with a short reason, 408/429/5xx retried with capped
  exponential back-off within `es_retry_deadline`, resending only those items.
  Whatever is still retryable at the deadline is FAILED (the device gets 5.03 and
  retries later). The deadline is meant to stay under the client's retransmission
  window (CoAP EXCHANGE_LIFETIME is far longer; a separate response keeps it open).
- A connection error or timeout marks the store down: every write fails at once
  (no work piles up behind a dead server), `healthy()` answers False, and a
  background probe (every PROBE_INTERVAL seconds) marks it up again when
  Elasticsearch answers: no restart needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson
from elastic_transport import ConnectionTimeout, TransportError
from elasticsearch import ApiError, AsyncElasticsearch
from elasticsearch.serializer import OrjsonSerializer

from collector.estemplate import index_template
from collector.events import reading
from collector.redact import redact_url
from collector.sinks.base import CONFLICT, DUPLICATE, STORED, Outcome, Result, StoreUnavailable

if TYPE_CHECKING:
    from collector.events import Event

__all__ = [
    "ElasticsearchSink",
    "EsSinkConfig",
    "Verdict",
    "classify",
    "es_nodes",
    "index_name",
]

log = logging.getLogger(__name__)

#: Seconds between probes while the store is down, and between start-up attempts.
PROBE_INTERVAL: Final = 0.5
#: First and largest pause between retries of 429/5xx items (doubling in between).
BACKOFF_FIRST: Final = 0.05
BACKOFF_MAX: Final = 1.0
#: Seconds a bulk request may run past the retry deadline before it counts as a timeout.
REQUEST_GRACE: Final = 1.0
#: healthy() trusts a successful contact this recent instead of asking again.
HEALTH_FRESH: Final = 1.0
#: Elasticsearch refuses a document `_id` longer than this many bytes.
MAX_ID_BYTES: Final = 512
#: Longest reason kept from an Elasticsearch error (the collector trims it further).
MAX_REASON: Final = 100
_MS_PER_DAY: Final = 86_400_000
# Only what the per-item judgement needs: keeps big responses small and cheap to parse.
_FILTER_PATH: Final = (
    "errors,items.*.status,items.*.error.type,items.*.error.reason,items.*.error.caused_by.type"
)
_FIELD_IN_REASON: Final = re.compile(r"field \[([^\]]{1,100})\]")
# What a 409'd event is compared on (mget `_source_includes`).
_READING_FIELDS: Final = ("@timestamp", "namespace", "sender", "origin", "payload")
# Index names Elasticsearch accepts, conservatively (lowercase, no path characters).
_VALID_PREFIX: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,200}")


class EsSinkConfig(Protocol):
    """The attributes of the collector's Config that this sink reads."""

    @property
    def es_url(self) -> str: ...
    @property
    def es_index_prefix(self) -> str: ...
    @property
    def es_username(self) -> str | None: ...
    @property
    def es_password(self) -> str | None: ...
    @property
    def es_api_key(self) -> str | None: ...
    @property
    def es_ca_certs(self) -> str | None: ...
    @property
    def store_wait(self) -> float: ...
    @property
    def es_retry_deadline(self) -> float: ...
    @property
    def es_compress(self) -> bool: ...
    @property
    def es_ilm_policy(self) -> str | None: ...


class Verdict(enum.Enum):
    """What to do with one `_bulk` item (or with a whole failed request)."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    REJECT = "reject"  # the event's fault: retrying cannot help (4.00)
    RETRY = "retry"  # the store is busy or hiccuped: resend this item
    FAIL = "fail"  # not the event's fault, and retrying will not help (5.03)


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    reason: str = ""


_STORED_J: Final = Judgement(Verdict.STORED)
_DUPLICATE_J: Final = Judgement(Verdict.DUPLICATE)


def classify(status: int, error: Mapping[str, Any] | str | None = None) -> Judgement:
    """Judge one bulk item (or a whole request) by its HTTP status and error object.

    200/201 stored; 409 (a `create` whose `_id` exists) duplicate; 400 rejected with a
    short reason naming the field when Elasticsearch names one; 408, 429 and 5xx
    retryable; any other status (401, 403, 404, 413, ...) a failure that is not the
    event's fault.
    """
    if status in (200, 201):
        return _STORED_J
    if status == 409:
        return _DUPLICATE_J
    if status == 400:
        return Judgement(Verdict.REJECT, short_reason(error))
    if status in (408, 429) or 500 <= status <= 599:
        return Judgement(Verdict.RETRY, f"elasticsearch answered {status}")
    if status == 401:
        return Judgement(Verdict.FAIL, "elasticsearch authentication failed (401)")
    if status == 403:
        block = _write_block(error)
        if block is not None:  # an index or cluster write block, not the user's rights
            return Judgement(Verdict.FAIL, f"elasticsearch blocks writes: {block} (403)")
        return Judgement(Verdict.FAIL, "elasticsearch refused the collector's user (403)")
    return Judgement(Verdict.FAIL, f"elasticsearch answered {status}")


def _write_block(error: Mapping[str, Any] | str | None) -> str | None:
    """`FORBIDDEN/8/index write (api)` from a 403 cluster_block_exception, else None."""
    if not isinstance(error, Mapping) or error.get("type") != "cluster_block_exception":
        return None
    found = re.search(r"blocked by: \[([^\]]{1,80})\]", str(error.get("reason") or ""))
    return found.group(1) if found else "cluster_block_exception"


def short_reason(error: Mapping[str, Any] | str | None) -> str:
    """`field: error_type` from an Elasticsearch error object, at most MAX_REASON chars."""
    if not isinstance(error, Mapping):
        return (str(error) if error else "rejected by elasticsearch")[:MAX_REASON]
    kind = str(error.get("type") or "rejected")
    reason = str(error.get("reason") or "")
    field = _FIELD_IN_REASON.search(reason)
    if field:
        return f"{field.group(1)}: {kind}"[:MAX_REASON]
    if reason:
        return f"{kind}: {reason}"[:MAX_REASON]
    return kind[:MAX_REASON]


def index_name(prefix: str, timestamp_ms: int) -> str:
    """`<prefix>-YYYY.MM.DD` for the UTC day of `timestamp_ms`."""
    day = datetime.fromtimestamp((timestamp_ms // _MS_PER_DAY) * 86_400, tz=UTC)
    return f"{prefix}-{day:%Y.%m.%d}"


def es_nodes(url: str) -> list[str]:
    """The node URLs of `--es-url`: one URL, or several separated by commas."""
    nodes = [part.strip().rstrip("/") for part in url.split(",") if part.strip()]
    if not nodes:
        raise ValueError("--es-url names no node")
    return nodes


def describe_connection_error(exc: BaseException) -> str:
    """A short phrase for why Elasticsearch could not be reached."""
    parts = (exc, getattr(exc, "message", ""), exc.__cause__ or "", getattr(exc, "errors", ""))
    text = " ".join(str(p) for p in parts).lower()
    if isinstance(exc, ConnectionTimeout) or "timeout" in text or "timed out" in text:
        return "timed out"
    if "refused" in text or "connect call failed" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text:
        return "cannot resolve host"
    if "ssl" in text or "certificate" in text or "tls" in text:
        return "TLS handshake failed"
    return "cannot connect"


class ElasticsearchSink:
    """Stores events in daily indices `<prefix>-YYYY.MM.DD` with `_bulk` `create`."""

    name = "elasticsearch"

    def __init__(self, config: EsSinkConfig, worker: int) -> None:
        prefix = config.es_index_prefix
        if not _VALID_PREFIX.fullmatch(prefix):
            raise ValueError(
                f"index prefix {prefix!r}: use lowercase letters, digits, '.', '_' or '-'"
            )
        nodes = es_nodes(config.es_url)
        self._url = ",".join(redact_url(node) for node in nodes)  # for messages
        self._prefix = prefix
        self._ilm_policy = config.es_ilm_policy
        self._username = config.es_username
        self._store_wait = max(0.0, float(config.store_wait))
        self._deadline = max(0.1, float(config.es_retry_deadline))
        self._worker = worker
        self._day_cache: dict[int, bytes] = {}  # day -> the action line up to the _id
        self._down = False
        self._down_reason = ""
        self._last_ok = 0.0
        self._probe_task: asyncio.Task[None] | None = None
        self._health_probe: asyncio.Task[bool] | None = None
        kwargs: dict[str, Any] = {
            "http_compress": bool(config.es_compress),
            # With several nodes, a connection error on one is retried on the next (the
            # transport marks the node dead for a while); statuses are judged here.
            "max_retries": len(nodes) - 1,
            "retry_on_status": (),
            "retry_on_timeout": False,
            "request_timeout": self._deadline,
            "connections_per_node": 16,
            # Bulk replies (an item per event) parsed by orjson, not the stdlib json.
            "serializer": OrjsonSerializer(),
        }
        if config.es_username is not None:
            kwargs["basic_auth"] = (config.es_username, config.es_password or "")
        if config.es_api_key:
            kwargs["api_key"] = config.es_api_key
        if config.es_ca_certs:
            kwargs["ca_certs"] = config.es_ca_certs
        self._client = AsyncElasticsearch(nodes, **kwargs)
        # The first try of a batch has the whole deadline; its client is made once here,
        # since options() builds a new client object per call (py-spy: ~5% of a worker
        # at 4k events/s). Retries, with less time left, still make their own.
        self._bulk_client = self._client.options(request_timeout=self._deadline + REQUEST_GRACE)

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Wait up to `store_wait` s for Elasticsearch, then install the index template.

        Raises StoreUnavailable with one line when it cannot be reached in time, when
        the credentials are refused (at once: waiting will not fix them), or when the
        template is refused.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._store_wait
        template = index_template(self._prefix, ilm_policy=self._ilm_policy)
        while True:
            try:
                # PUT of the same template is idempotent, so replicas starting together
                # may all do it; the cluster serialises the updates.
                await self._client.options(
                    request_timeout=max(1.0, self._deadline)
                ).indices.put_index_template(**template)
                self._mark_up()
                return
            except ApiError as exc:
                status = exc.meta.status
                if status == 401:
                    raise StoreUnavailable(
                        f"elasticsearch at {self._url}: authentication failed (401) "
                        f"for {self._who()}"
                    ) from None
                if status == 403:
                    raise StoreUnavailable(
                        f"elasticsearch at {self._url}: {self._who()} may not manage index "
                        f"templates (403); grant manage_index_templates or install it once"
                    ) from None
                if status < 500 and status not in (408, 409, 429):
                    raise StoreUnavailable(
                        f"elasticsearch at {self._url}: index template refused ({status}): "
                        f"{short_reason(_error_of(exc))}"
                    ) from None
                why = f"answered {status}"
            except TransportError as exc:
                why = describe_connection_error(exc)
            if loop.time() + PROBE_INTERVAL > give_up:
                raise StoreUnavailable(
                    f"elasticsearch at {self._url}: {why} (waited {self._store_wait:g} s)"
                )
            await asyncio.sleep(PROBE_INTERVAL)

    async def close(self) -> None:
        """Stop the probe and close the connection pool."""
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None
        if self._health_probe is not None and not self._health_probe.done():
            self._health_probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_probe
        await self._client.close()

    async def healthy(self) -> bool:
        """False while the store is down; asks Elasticsearch when the last contact is stale."""
        if self._down:
            return False
        if time.monotonic() - self._last_ok < HEALTH_FRESH:
            return True
        # Concurrent callers (a burst of GET /health) share one probe.
        if self._health_probe is None or self._health_probe.done():
            self._health_probe = asyncio.get_running_loop().create_task(self._probe())
        if await asyncio.shield(self._health_probe):
            self._mark_up()
            return True
        self._mark_down("health probe failed")
        return False

    # -- writing ---------------------------------------------------------------------

    async def write(self, events: Sequence[Event]) -> list[Result]:
        """Store a batch with `_bulk` `create`; one Result per event, in order. Never raises."""
        n = len(events)
        if n == 0:
            return []
        if self._down:
            return [self._failed_down()] * n
        results: list[Result | None] = [None] * n
        lines: list[bytes] = [b""] * n
        pending: list[int] = []
        for i, event in enumerate(events):
            if len(event.id.encode()) > MAX_ID_BYTES:
                results[i] = Result(Outcome.REJECTED, f"id: longer than {MAX_ID_BYTES} bytes")
                continue
            try:
                lines[i] = self._action(event)
            except (TypeError, orjson.JSONEncodeError) as exc:
                results[i] = Result(Outcome.REJECTED, f"not serialisable: {exc}"[:MAX_REASON])
                continue
            pending.append(i)

        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._deadline
        backoff = BACKOFF_FIRST
        client = self._bulk_client
        present: list[int] = []  # 409s under a client id: same content or a conflict?
        while pending:
            retry: list[int] = []
            retry_reason = ""
            remaining = give_up - loop.time()
            try:
                # `timeout` bounds Elasticsearch's wait for an unavailable shard to half of
                # what is left, so such items come back as 503 (retryable per item) well
                # before the HTTP request itself times out (which marks the store down).
                response = await client.bulk(
                    operations=b"".join([lines[i] for i in pending]),  # type: ignore[arg-type]
                    filter_path=_FILTER_PATH,
                    timeout=f"{max(50, int(remaining * 500))}ms",
                )
            except ApiError as exc:
                # The whole request was refused (429 queue full, 503 no master, 401...).
                # A whole-request 400 is a malformed bulk body: the collector's fault,
                # not any one event's, so FAILED rather than REJECTED.
                judged = classify(exc.meta.status, _error_of(exc))
                if judged.verdict is Verdict.RETRY:
                    retry, retry_reason = pending, judged.reason
                else:
                    failed = Result(Outcome.FAILED, judged.reason)
                    for i in pending:
                        results[i] = failed
            except TransportError as exc:
                # Connection refused / reset / timed out: this batch may or may not be
                # stored; FAILED makes the device retry, and `create` makes that harmless.
                self._mark_down(describe_connection_error(exc))
                failed = self._failed_down()
                for i in pending:
                    results[i] = failed
                pending = []
                break
            else:
                self._last_ok = time.monotonic()
                body = response.body
                if not body.get("errors"):
                    for i in pending:
                        results[i] = STORED
                else:
                    items = body.get("items") or []
                    if len(items) != len(pending):
                        for i in pending:
                            results[i] = Result(Outcome.FAILED, "elasticsearch bulk reply mismatch")
                        break
                    for i, item in zip(pending, items, strict=True):
                        op = next(iter(item.values())) if item else {}
                        judged = classify(int(op.get("status", 500)), op.get("error"))
                        if judged.verdict is Verdict.RETRY:
                            retry.append(i)
                            retry_reason = judged.reason
                        elif judged.verdict is Verdict.DUPLICATE and events[i].client_id:
                            present.append(i)
                        else:
                            results[i] = _result_of(judged)
            pending = retry
            if not pending:
                break
            if loop.time() + backoff >= give_up:
                failed = Result(Outcome.FAILED, f"{retry_reason}; gave up after retries")
                for i in pending:
                    results[i] = failed
                break
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            client = self._client.options(
                request_timeout=max(1.0, give_up - loop.time()) + REQUEST_GRACE
            )
        if present:
            await self._judge_present(events, present, results, give_up - loop.time())
        return [r if r is not None else Result(Outcome.FAILED, "not written") for r in results]

    async def _judge_present(
        self,
        events: Sequence[Event],
        present: list[int],
        results: list[Result | None],
        remaining: float,
    ) -> None:
        """Judge the 409'd items that carry a client id: one `mget` reads the stored
        documents back, and each is DUPLICATE when it holds the same reading, else
        CONFLICT. When they cannot be read the items are FAILED (the device retries)."""
        prefix = self._prefix
        docs = [
            {"_index": index_name(prefix, events[i].timestamp_ms), "_id": events[i].id}
            for i in present
        ]
        try:
            response = await self._client.options(
                request_timeout=max(1.0, remaining) + REQUEST_GRACE
            ).mget(docs=docs, source_includes=list(_READING_FIELDS), realtime=True)
            found = response.body.get("docs") or []
        except ApiError as exc:
            failed = Result(Outcome.FAILED, classify(exc.meta.status, _error_of(exc)).reason)
            for i in present:
                results[i] = failed
            return
        except TransportError as exc:
            self._mark_down(describe_connection_error(exc))
            for i in present:
                results[i] = self._failed_down()
            return
        if len(found) != len(present):
            found = []
        for n, i in enumerate(present):
            doc = found[n] if n < len(found) else {}
            source = doc.get("_source") if doc.get("found") else None
            results[i] = (
                _judge_stored(events[i], source)
                if isinstance(source, Mapping)
                else Result(Outcome.FAILED, "elasticsearch: stored event not readable")
            )

    def _action(self, event: Event) -> bytes:
        day = event.timestamp_ms // _MS_PER_DAY
        head = self._day_cache.get(day)
        if head is None:
            if len(self._day_cache) > 64:
                self._day_cache.clear()
            index = index_name(self._prefix, event.timestamp_ms)
            head = self._day_cache[day] = b'{"create":{"_index":"' + index.encode() + b'","_id":'
        return b"".join(
            (head, orjson.dumps(event.id), b"}}\n", orjson.dumps(event.document()), b"\n")
        )

    # -- up / down -------------------------------------------------------------------

    def _who(self) -> str:
        return (
            f"user {self._username!r}"
            if self._username is not None
            else "the API key or anonymous user"
        )

    def _failed_down(self) -> Result:
        return Result(Outcome.FAILED, f"elasticsearch unavailable: {self._down_reason}")

    def _mark_up(self) -> None:
        self._last_ok = time.monotonic()
        if self._down:
            log.warning(
                "elasticsearch at %s is reachable again (worker %d)", self._url, self._worker
            )
        self._down = False

    def _mark_down(self, reason: str) -> None:
        if not self._down:
            log.warning(
                "elasticsearch at %s unavailable (%s): failing writes until it answers (worker %d)",
                self._url,
                reason,
                self._worker,
            )
        self._down = True
        self._down_reason = reason
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.get_running_loop().create_task(self._recover())

    async def _probe(self) -> bool:
        """One cheap request: does Elasticsearch answer, and accept our credentials?"""
        try:
            await self._client.options(request_timeout=1.0).cluster.health()
        except ApiError as exc:
            # 403: reachable, merely not allowed to read cluster health; good enough.
            return exc.meta.status == 403
        except TransportError:
            return False
        return True

    async def _recover(self) -> None:
        while self._down:
            await asyncio.sleep(PROBE_INTERVAL)
            if await self._probe():
                self._mark_up()


def _judge_stored(event: Event, source: Mapping[str, Any]) -> Result:
    """DUPLICATE when the stored `_source` holds `event`'s reading, else CONFLICT."""
    payload = source.get("payload")
    if not isinstance(payload, Mapping):
        return CONFLICT
    value: Any
    if "value_bool" in payload:
        value = payload["value_bool"]
    elif "value_string" in payload:
        value = payload["value_string"]
    else:
        value = payload.get("value")
    if type(value) not in (bool, str, int, float):
        return CONFLICT
    stored = reading(
        source.get("namespace", ""),
        source.get("sender", ""),
        source.get("origin", ""),
        payload.get("type", ""),
        value,
        payload.get("unit"),
    )
    ts = source.get("@timestamp")
    if stored == event.reading() and type(ts) is int and event.same_time(ts):
        return DUPLICATE
    return CONFLICT


def _result_of(judged: Judgement) -> Result:
    if judged.verdict is Verdict.STORED:
        return STORED
    if judged.verdict is Verdict.DUPLICATE:
        return DUPLICATE
    if judged.verdict is Verdict.REJECT:
        return Result(Outcome.REJECTED, judged.reason)
    return Result(Outcome.FAILED, judged.reason)


def _error_of(exc: ApiError) -> Mapping[str, Any] | str | None:
    body = exc.body
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping | str):
            return error
    return str(exc.message) if exc.message else None
