"""The QueueDriver on Amazon SQS (or any SQS endpoint: moto, localstack).

Each logical queue ``q`` is the SQS queue ``{prefix}{q}`` plus a dead-letter queue
``{prefix}{q}-dlq`` wired by a RedrivePolicy (``maxReceiveCount``); both are created on first
use. Payloads are JSON object bodies.

Stale receipts - what SQS really guarantees, and what this driver adds:

* SQS itself does not fence: DeleteMessage with a superseded receipt handle "succeeds, but the
  message might not be deleted" (AWS API reference), i.e. it may delete the redelivered copy
  and never reports an error. ChangeMessageVisibility with an expired or superseded handle is
  rejected by AWS (``InvalidParameterValue``: "receipt handle has expired"), which this driver
  raises as ``StaleReceipt``. moto accepts every receipt a message ever had, for both calls.
* This driver remembers the latest receipt of every message it received (bounded, per
  instance). An ``ack``/``extend``/``nack`` whose receipt this instance knows to be superseded,
  or whose message it already acked or nacked, raises ``StaleReceipt`` without calling SQS.
  That fences stale receipts within one process; across processes SQS gives only the
  guarantees above, so a stale ack from another process may delete the current copy.
  Queue messages are wake-ups: correctness comes from the task lease in Postgres, and a lost
  wake-up is re-sent by the reaper.

Other differences from pgqueue: visibility, delays and waits are whole seconds (rounded up;
delay capped at 900 s, visibility at 43200 s); a nacked message waiting out its delay counts
as ``in_flight``; ``oldest_age_seconds`` comes from CloudWatch's ``ApproximateAgeOfOldestMessage``
(the newest datapoint of the last ten minutes; None when there is none or CloudWatch refuses,
which is logged); ``last_error`` is kept only when the driver dead-letters the message itself (a nack at
the receive limit, or a body that is not a JSON object), not when SQS redrives it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from trace_core.errors import ConfigError, InvalidPayload, QueueError, StaleReceipt
from trace_core.queue.base import DeadMessage, Message, QueueStats, check_publisher

log = logging.getLogger(__name__)

MAX_DELAY_SECONDS = 900
MAX_VISIBILITY_SECONDS = 43200
MAX_WAIT_SECONDS = 20
_BATCH = 10
_BATCH_BYTES = 200_000  # below SQS's 256 KiB per-batch limit
_SCAN_VISIBILITY_SECONDS = 60
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,76}$")  # 80 minus the "-dlq" suffix
_STALE_CODES = {
    "ReceiptHandleIsInvalid",
    "MessageNotInflight",
    "AWS.SimpleQueueService.MessageNotInflight",
}
_ATTR_REASON = "trace_reason"
_ATTR_ERROR = "trace_last_error"
_ATTR_COUNT = "trace_receive_count"
_ATTR_ID = "trace_message_id"


@dataclass(frozen=True)
class _Urls:
    main: str
    dead: str


class _ReceiptGuard:
    """Latest receipt per message id seen by this driver instance (LRU-bounded)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._latest: OrderedDict[str, tuple[str, bool]] = OrderedDict()
        self._lock = threading.Lock()

    def received(self, message: Message) -> None:
        self._remember(message, live=True)

    def finished(self, message: Message) -> None:
        """The receipt was spent (acked or nacked): every receipt of the message is stale."""
        self._remember(message, live=False)

    def _remember(self, message: Message, *, live: bool) -> None:
        with self._lock:
            self._latest[message.message_id] = (message.receipt, live)
            self._latest.move_to_end(message.message_id)
            while len(self._latest) > self._capacity:
                self._latest.popitem(last=False)

    def is_stale(self, message: Message) -> bool:
        with self._lock:
            known = self._latest.get(message.message_id)
        if known is None:
            return False  # received elsewhere: only SQS can judge
        receipt, live = known
        return receipt != message.receipt or not live


class SqsQueue:
    """QueueDriver on SQS. Thread-safe (one boto3 client; receipt guard behind a lock)."""

    def __init__(
        self,
        *,
        max_receive_count: int,
        queue_prefix: str = "trace-",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        default_visibility_timeout: int = 60,
        client: Any = None,
        guard_capacity: int = 100_000,
    ) -> None:
        if not 1 <= max_receive_count <= 1000:
            raise ConfigError("must be between 1 and 1000 for SQS", field="max_receive_count")
        self.max_receive_count = max_receive_count
        self.queue_prefix = queue_prefix
        self._default_visibility = _seconds(default_visibility_timeout, MAX_VISIBILITY_SECONDS)
        self._client = client or boto3.session.Session().client(
            "sqs",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(retries={"mode": "standard", "max_attempts": 5}),
        )
        # CloudWatch (oldest message age) on the same endpoint: one server for moto/localstack.
        self._cloudwatch = boto3.session.Session().client(
            "cloudwatch", endpoint_url=endpoint_url, region_name=region
        )
        self._urls: dict[str, _Urls] = {}
        self._urls_lock = threading.Lock()
        self._guard = _ReceiptGuard(guard_capacity)

    def close(self) -> None:
        self._client.close()
        self._cloudwatch.close()

    # --- queues ----------------------------------------------------------------------

    def queue_url(self, queue: str) -> str:
        """URL of the SQS queue behind ``queue`` (created with its DLQ on first use)."""
        return self._ensure(queue).main

    def dead_queue_url(self, queue: str) -> str:
        return self._ensure(queue).dead

    def _ensure(self, queue: str) -> _Urls:
        urls = self._urls.get(queue)
        if urls is not None:
            return urls
        with self._urls_lock:
            urls = self._urls.get(queue)
            if urls is None:
                urls = self._create(queue)
                self._urls[queue] = urls
        return urls

    def _create(self, queue: str) -> _Urls:
        name = f"{self.queue_prefix}{queue}"
        if not _NAME_RE.match(name):
            raise ConfigError(
                f"SQS queue name {name!r} must be 1-76 letters, digits, '-' or '_'",
                field="sqs_queue_prefix",
            )
        dead = self._call("CreateQueue", QueueName=f"{name}-dlq")["QueueUrl"]
        arn = self._call("GetQueueAttributes", QueueUrl=dead, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        attributes = {
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": arn, "maxReceiveCount": str(self.max_receive_count)}
            ),
            "VisibilityTimeout": str(self._default_visibility),
        }
        try:
            main = self._client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        except ClientError as exc:
            if _code(exc) not in ("QueueAlreadyExists", "QueueNameExists"):
                raise QueueError(f"SQS CreateQueue {name}: {_describe(exc)}") from exc
            main = self._call("GetQueueUrl", QueueName=name)["QueueUrl"]
            self._call(
                "SetQueueAttributes",
                QueueUrl=main,
                Attributes={"RedrivePolicy": attributes["RedrivePolicy"]},
            )
        except BotoCoreError as exc:
            raise QueueError(f"SQS CreateQueue {name}: {exc}") from exc
        log.info("sqs queue ready", extra={"queue": name})
        return _Urls(main=main, dead=dead)

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One SQS call; every botocore error becomes ``QueueError`` (cause kept)."""
        method = getattr(self._client, _snake(operation))
        try:
            result: dict[str, Any] = method(**kwargs)
        except ClientError as exc:
            raise QueueError(f"SQS {operation}: {_describe(exc)}", code=_code(exc)) from exc
        except BotoCoreError as exc:
            raise QueueError(f"SQS {operation}: {exc}") from exc
        return result

    def _receipt_call(self, operation: str, message: Message, **kwargs: Any) -> None:
        """A call that presents ``message.receipt``; receipt errors become ``StaleReceipt``."""
        try:
            self._call(operation, ReceiptHandle=message.receipt, **kwargs)
        except QueueError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and _is_stale(cause):
                raise _stale(message, _describe(cause)) from cause
            raise

    # --- publishing ------------------------------------------------------------------

    def publish(self, queue: str, payload: Mapping[str, Any], *, delay_seconds: float = 0) -> str:
        """Send one message; delays are whole seconds, at most 900."""
        check_publisher(queue)
        out = self._call(
            "SendMessage",
            QueueUrl=self.queue_url(queue),
            MessageBody=_dumps(payload),
            DelaySeconds=_seconds(delay_seconds, MAX_DELAY_SECONDS),
        )
        return str(out["MessageId"])

    def publish_batch(
        self, queue: str, payloads: Sequence[Mapping[str, Any]], *, delay_seconds: float = 0
    ) -> list[str]:
        """Send in SendMessageBatch chunks; raises ``QueueError`` if any entry failed (the
        others were sent: publishing is at-least-once, a retry duplicates them)."""
        check_publisher(queue)
        url = self.queue_url(queue) if payloads else ""
        delay = _seconds(delay_seconds, MAX_DELAY_SECONDS)
        bodies = [_dumps(p) for p in payloads]
        ids: list[str] = []
        for chunk in _chunks(bodies):
            entries = [
                {"Id": str(i), "MessageBody": b, "DelaySeconds": delay} for i, b in enumerate(chunk)
            ]
            out = self._call("SendMessageBatch", QueueUrl=url, Entries=entries)
            failed = out.get("Failed") or []
            if failed:
                codes = sorted({f.get("Code", "?") for f in failed})
                raise QueueError(
                    f"SQS SendMessageBatch: {len(failed)} of {len(entries)} failed ({', '.join(codes)})"
                )
            by_id = {s["Id"]: s["MessageId"] for s in out.get("Successful", [])}
            ids.extend(by_id[str(i)] for i in range(len(chunk)))
        return ids

    # --- consuming -------------------------------------------------------------------

    def receive(
        self,
        queue: str,
        max_messages: int = 1,
        *,
        visibility_timeout: float,
        wait_seconds: float = 0,
    ) -> list[Message]:
        """Receive up to ``max_messages`` (SQS calls of at most 10, repeated while full).

        ``wait_seconds`` (whole seconds, at most 20) long-polls the first call only.
        """
        if max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        url = self.queue_url(queue)
        visibility = _seconds(visibility_timeout, MAX_VISIBILITY_SECONDS)
        wait = _seconds(wait_seconds, MAX_WAIT_SECONDS)
        messages: list[Message] = []
        while len(messages) < max_messages:
            want = min(_BATCH, max_messages - len(messages))
            out = self._call(
                "ReceiveMessage",
                QueueUrl=url,
                MaxNumberOfMessages=want,
                VisibilityTimeout=visibility,
                WaitTimeSeconds=wait,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
            raw = out.get("Messages") or []
            for item in raw:
                message = self._decode(queue, item)
                if message is not None:
                    self._guard.received(message)
                    messages.append(message)
            if len(raw) < want:
                break
            wait = 0
        return messages

    def _decode(self, queue: str, item: Mapping[str, Any]) -> Message | None:
        count = int(item.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        try:
            payload = json.loads(item["Body"])
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            return Message(queue, item["MessageId"], item["ReceiptHandle"], payload, count)
        held = Message(queue, item["MessageId"], item["ReceiptHandle"], {}, count)
        self._bury(held, item["Body"], reason="invalid_payload", error="body is not a JSON object")
        return None

    def ack(self, message: Message) -> None:
        """DeleteMessage. Raises ``StaleReceipt`` when the receipt is known to be stale (see
        the module docstring for what SQS itself checks)."""
        self._check(message)
        self._receipt_call("DeleteMessage", message, QueueUrl=self.queue_url(message.queue))
        self._guard.finished(message)

    def ack_batch(self, messages: Sequence[Message]) -> list[Message]:
        """DeleteMessageBatch per queue; returns the messages whose receipts were stale."""
        stale = [m for m in messages if self._guard.is_stale(m)]
        fresh = [m for m in messages if not self._guard.is_stale(m)]
        by_queue: dict[str, list[Message]] = {}
        for m in fresh:
            by_queue.setdefault(m.queue, []).append(m)
        errors: list[str] = []
        for queue, items in by_queue.items():
            url = self.queue_url(queue)
            for start in range(0, len(items), _BATCH):
                chunk = items[start : start + _BATCH]
                out = self._call(
                    "DeleteMessageBatch",
                    QueueUrl=url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m.receipt} for i, m in enumerate(chunk)
                    ],
                )
                failed = {f["Id"]: f for f in out.get("Failed") or []}
                for i, m in enumerate(chunk):
                    failure = failed.get(str(i))
                    if failure is None:
                        self._guard.finished(m)
                    elif _is_stale_code(failure.get("Code", ""), failure.get("Message", "")):
                        stale.append(m)
                    else:
                        errors.append(f"{m.message_id}: {failure.get('Code')}")
        if errors:
            raise QueueError(f"SQS DeleteMessageBatch failed for {', '.join(errors)}")
        return stale

    def ack_receive(
        self,
        done: Sequence[Message],
        queue: str,
        max_messages: int = 1,
        *,
        visibility_timeout: float,
    ) -> tuple[list[Message], list[Message]]:
        """``ack_batch(done)`` then ``receive`` (no wait): two requests on SQS."""
        stale = self.ack_batch(done) if done else []
        return stale, self.receive(queue, max_messages, visibility_timeout=visibility_timeout)

    def extend(self, message: Message, visibility_timeout: float) -> None:
        """ChangeMessageVisibility from now. Raises ``StaleReceipt`` (see module docstring)."""
        self._check(message)
        self._receipt_call(
            "ChangeMessageVisibility",
            message,
            QueueUrl=self.queue_url(message.queue),
            VisibilityTimeout=_seconds(visibility_timeout, MAX_VISIBILITY_SECONDS),
        )

    def nack(self, message: Message, *, delay_seconds: float = 0, error: str | None = None) -> None:
        """Make the message receivable after ``delay_seconds``; at the receive limit move it to
        the DLQ at once with ``error``. Below the limit SQS cannot keep ``error``."""
        self._check(message)
        url = self.queue_url(message.queue)
        if message.receive_count >= self.max_receive_count:
            # Prove the receipt first (AWS rejects stale ones here), then copy, then delete:
            # a crash in between leaves a duplicate dead letter, never a lost one.
            self._receipt_call(
                "ChangeMessageVisibility",
                message,
                QueueUrl=url,
                VisibilityTimeout=_SCAN_VISIBILITY_SECONDS,
            )
            self._bury(message, _dumps(message.payload), reason="max_receive_count", error=error)
        else:
            self._receipt_call(
                "ChangeMessageVisibility",
                message,
                QueueUrl=url,
                VisibilityTimeout=_seconds(delay_seconds, MAX_VISIBILITY_SECONDS),
            )
        self._guard.finished(message)

    def _check(self, message: Message) -> None:
        if self._guard.is_stale(message):
            raise _stale(message, "superseded or finished in this process")

    def _bury(self, message: Message, body: str, *, reason: str, error: str | None) -> None:
        """Copy to the DLQ with reason/error attributes, then delete the original."""
        attributes = {
            _ATTR_REASON: {"DataType": "String", "StringValue": reason},
            _ATTR_COUNT: {"DataType": "Number", "StringValue": str(message.receive_count)},
            _ATTR_ID: {"DataType": "String", "StringValue": message.message_id},
        }
        if error:
            attributes[_ATTR_ERROR] = {"DataType": "String", "StringValue": error[:2000]}
        self._call(
            "SendMessage",
            QueueUrl=self.dead_queue_url(message.queue),
            MessageBody=body,
            MessageAttributes=attributes,
        )
        self._receipt_call("DeleteMessage", message, QueueUrl=self.queue_url(message.queue))
        log.warning(
            "dead-lettered",
            extra={"queue": message.queue, "message_id": message.message_id, "reason": reason},
        )

    # --- inspection and dead letters -------------------------------------------------

    def stats(self, queue: str) -> QueueStats:
        """From queue attributes (approximate on AWS, exact on moto)."""
        main = self._attributes(self.queue_url(queue))
        dead = self._attributes(self.dead_queue_url(queue))
        return QueueStats(
            depth=main["ApproximateNumberOfMessages"] + main["ApproximateNumberOfMessagesDelayed"],
            in_flight=main["ApproximateNumberOfMessagesNotVisible"],
            oldest_age_seconds=self._oldest_age(f"{self.queue_prefix}{queue}"),
            dead=sum(dead.values()),
        )

    def _oldest_age(self, name: str) -> float | None:
        """CloudWatch's ApproximateAgeOfOldestMessage for SQS queue ``name`` (1-minute points)."""
        now = datetime.now(UTC)
        try:
            points = self._cloudwatch.get_metric_statistics(
                Namespace="AWS/SQS",
                MetricName="ApproximateAgeOfOldestMessage",
                Dimensions=[{"Name": "QueueName", "Value": name}],
                StartTime=now - timedelta(minutes=10),
                EndTime=now,
                Period=60,
                Statistics=["Maximum"],
            )["Datapoints"]
        except (ClientError, BotoCoreError) as exc:
            # Optional: stats stay useful without cloudwatch:GetMetricStatistics.
            log.warning("sqs oldest age unavailable", extra={"queue": name, "error": str(exc)})
            return None
        if not points:
            return None
        newest = max(points, key=lambda p: p["Timestamp"])
        return float(newest["Maximum"])

    def _attributes(self, url: str) -> dict[str, int]:
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        attrs = self._call("GetQueueAttributes", QueueUrl=url, AttributeNames=names)["Attributes"]
        return {n: int(attrs.get(n, 0)) for n in names}

    def list_dead(self, queue: str, limit: int = 100) -> list[DeadMessage]:
        """Peek at up to ``limit`` dead letters (received, then made visible again)."""
        out: list[DeadMessage] = []
        with self._scan_dead(queue) as scan:
            for item in scan:
                out.append(self._dead_message(queue, item))
                if len(out) >= limit:
                    break
        return out

    def replay_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Send dead letters (all, or those ids) back to the live queue as new messages
        (receive count 0), then delete them from the DLQ."""
        url = self.queue_url(queue)
        wanted = None if message_ids is None else set(message_ids)
        moved = 0
        with self._scan_dead(queue) as scan:
            for item in scan:
                if wanted is not None and _dead_id(item) not in wanted:
                    continue
                self._call("SendMessage", QueueUrl=url, MessageBody=item["Body"])
                self._call(
                    "DeleteMessage",
                    QueueUrl=self.dead_queue_url(queue),
                    ReceiptHandle=item["ReceiptHandle"],
                )
                scan.consumed(item)
                moved += 1
        return moved

    def purge_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Delete dead letters (all, or those ids); returns how many."""
        wanted = None if message_ids is None else set(message_ids)
        purged = 0
        with self._scan_dead(queue) as scan:
            for item in scan:
                if wanted is not None and _dead_id(item) not in wanted:
                    continue
                self._call(
                    "DeleteMessage",
                    QueueUrl=self.dead_queue_url(queue),
                    ReceiptHandle=item["ReceiptHandle"],
                )
                scan.consumed(item)
                purged += 1
        return purged

    def _scan_dead(self, queue: str) -> _DeadScan:
        return _DeadScan(self, self.dead_queue_url(queue))

    def _dead_message(self, queue: str, item: Mapping[str, Any]) -> DeadMessage:
        attrs = item.get("MessageAttributes") or {}
        try:
            payload = json.loads(item["Body"])
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            payload = {"raw_body": item["Body"]}
        count = attrs.get(_ATTR_COUNT, {}).get("StringValue")
        return DeadMessage(
            queue=queue,
            message_id=_dead_id(item),
            payload=payload,
            # SQS redrive: the DLQ's own receives inflate ApproximateReceiveCount, so report
            # the limit the message reached.
            receive_count=int(count) if count else self.max_receive_count,
            reason=attrs.get(_ATTR_REASON, {}).get("StringValue", "max_receive_count"),
            last_error=attrs.get(_ATTR_ERROR, {}).get("StringValue"),
        )


class _DeadScan:
    """Receive every DLQ message once (hidden meanwhile); on exit release those not consumed.

    Short polls stop at the first empty answer: exact on moto; on AWS a short poll samples a
    subset of servers, so a large DLQ may need more than one pass.
    """

    def __init__(self, driver: SqsQueue, url: str) -> None:
        self._driver = driver
        self._url = url
        self._held: dict[str, str] = {}

    def __enter__(self) -> _DeadScan:
        return self

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            out = self._driver._call(
                "ReceiveMessage",
                QueueUrl=self._url,
                MaxNumberOfMessages=_BATCH,
                VisibilityTimeout=_SCAN_VISIBILITY_SECONDS,
                WaitTimeSeconds=0,
                MessageAttributeNames=["All"],
            )
            items = out.get("Messages") or []
            if not items:
                return
            for item in items:  # hold the whole batch first: the caller may stop early
                self._held[item["MessageId"]] = item["ReceiptHandle"]
            yield from items

    def consumed(self, item: Mapping[str, Any]) -> None:
        self._held.pop(item["MessageId"], None)

    def __exit__(self, *exc: object) -> None:
        held = list(self._held.values())
        self._held.clear()
        for start in range(0, len(held), _BATCH):
            entries = [
                {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
                for i, h in enumerate(held[start : start + _BATCH])
            ]
            self._driver._call("ChangeMessageVisibilityBatch", QueueUrl=self._url, Entries=entries)


def _dead_id(item: Mapping[str, Any]) -> str:
    attrs = item.get("MessageAttributes") or {}
    return str(attrs.get(_ATTR_ID, {}).get("StringValue") or item["MessageId"])


def _chunks(bodies: list[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for body in bodies:
        n = len(body.encode())
        if chunk and (len(chunk) == _BATCH or size + n > _BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(body)
        size += n
    if chunk:
        yield chunk


def _seconds(value: float, cap: int) -> int:
    """SQS takes whole seconds: round up, clamp to ``[0, cap]``."""
    return max(0, min(cap, math.ceil(value)))


def _dumps(payload: Mapping[str, Any]) -> str:
    """JSON text of a payload; raises ``InvalidPayload`` for anything JSON cannot carry."""
    try:
        return json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"queue payload is not JSON: {exc}") from exc


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: ClientError) -> str:
    err = exc.response.get("Error", {})
    return f"{err.get('Code', '?')}: {err.get('Message', '')}"


def _is_stale_code(code: str, message: str) -> bool:
    # AWS answers InvalidParameterValue "... parameter ReceiptHandle is invalid. Reason: The
    # receipt handle has expired" for superseded handles; other InvalidParameterValue errors
    # (e.g. a visibility past the 12 h limit) are not about the receipt.
    return code in _STALE_CODES or (code == "InvalidParameterValue" and "ReceiptHandle" in message)


def _is_stale(exc: ClientError) -> bool:
    err = exc.response.get("Error", {})
    return _is_stale_code(str(err.get("Code", "")), str(err.get("Message", "")))


def _stale(message: Message, detail: str) -> StaleReceipt:
    return StaleReceipt(
        f"stale receipt for message {message.message_id} on {message.queue}: {detail}",
        message_id=message.message_id,
    )
