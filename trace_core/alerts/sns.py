"""The SMS channel: one AWS SNS ``Publish`` per delivery (``boto3``).

The client uses ``TRACE_AWS_REGION`` and ``TRACE_SNS_ENDPOINT_URL`` (moto, LocalStack), the
standard AWS credential chain, and no botocore retries: the delivery step owns retries and
backoff. To a phone number, SNS has no idempotency: a resend after a crash mid-send may text
twice. To a FIFO topic, ``MessageDeduplicationId`` is the delivery id, so SNS drops a resend.

Throttling and server-side errors, timeouts and unreachable endpoints -> retry; everything
else (invalid parameter, not found, authorization, opted-out numbers, no credentials) ->
failed. Errors carry SNS's error code and message, never credentials.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from trace_core.alerts import render
from trace_core.alerts.channel_spec import SmsChannel
from trace_core.alerts.outcome import SendResult, scrub
from trace_core.settings import Settings

RETRY_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "KMSThrottling",
    }
)
TIMEOUT_SECONDS = 10


def sns_client(settings: Settings) -> Any:
    """A thread-safe SNS client without botocore retries."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "sns",
        region_name=settings.aws_region,
        endpoint_url=settings.sns_endpoint_url,
        config=Config(
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=TIMEOUT_SECONDS,
            read_timeout=TIMEOUT_SECONDS,
        ),
    )


def classify_error(code: str, http_status: int | None) -> str:
    """``retry`` or ``failed`` for an SNS error code."""
    if code in RETRY_CODES or (http_status is not None and http_status >= 500):
        return "retry"
    return "failed"


def publish_args(channel: SmsChannel, delivery: uuid.UUID, event: Mapping[str, Any]) -> dict:
    args: dict[str, Any] = {"Message": render.sms_text(event)}
    if channel.phone_number is not None:
        args["PhoneNumber"] = channel.phone_number
        args["MessageAttributes"] = {
            "AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": "Transactional"}
        }
    else:
        args["TopicArn"] = channel.topic_arn
        args["Subject"] = f"{event['alert_name']} ({event['severity']})"[:100]
        if str(channel.topic_arn).endswith(".fifo"):
            args["MessageDeduplicationId"] = delivery.hex
            args["MessageGroupId"] = event["alert_name"]
    return args


def send_sms(
    client: Any, channel: SmsChannel, delivery: uuid.UUID, event: Mapping[str, Any]
) -> SendResult:
    """Publish one alert text; never raises for AWS or network failures."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        HTTPClientError,
        NoCredentialsError,
    )

    try:
        client.publish(**publish_args(channel, delivery, event))
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        outcome = "retry" if classify_error(code, status) == "retry" else "failed"
        return SendResult(
            outcome,  # type: ignore[arg-type]
            status_code=status,
            error=scrub(f"SNS {code}: {err.get('Message', '')}".strip()),
        )
    except NoCredentialsError:
        return SendResult("failed", error="SNS: no AWS credentials (the standard AWS chain)")
    except (ConnectionError, HTTPClientError) as exc:
        return SendResult("retry", error=scrub(f"SNS unreachable: {type(exc).__name__}"))
    except BotoCoreError as exc:
        return SendResult("failed", error=scrub(f"SNS: {type(exc).__name__}: {exc}"))
    return SendResult("delivered", status_code=200)
