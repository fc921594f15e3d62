"""driver.v1.WebhookService over grpc.aio: decode, call WebhookAdmin, encode, map errors.
Secrets are taken, never given back: a Webhook carries only `secret_hint`."""

from __future__ import annotations

from typing import Any

import grpc

from driver_service._gen.driver.v1 import webhooks_pb2 as wpb
from driver_service._gen.driver.v1 import webhooks_pb2_grpc as wpb_grpc
from driver_service.api.errors import AbortOnDomainError
from driver_service.app.webhooks import WebhookAdmin
from driver_service.domain.webhooks import DeadLetter, Endpoint
from driver_service.wire import ns_to_timestamp


def webhook_to_pb(e: Endpoint, circuit_threshold: int) -> wpb.Webhook:
    msg = wpb.Webhook(
        id=e.endpoint_id,
        url=e.url,
        types=e.types,
        zone_ids=e.zone_ids,
        driver_ids=e.driver_ids,
        secret_hint=e.secret_hint,
        created_at=ns_to_timestamp(e.created_at_ns),
        paused=e.paused,
        cursor=e.cursor,
        attempts=e.attempts,
        last_error=e.last_error,
        circuit_open=e.consecutive_failures >= circuit_threshold,
    )
    if e.previous_secret:
        msg.previous_secret_until.CopyFrom(ns_to_timestamp(e.previous_until_ns))
    if e.next_attempt_ns:
        msg.next_attempt_at.CopyFrom(ns_to_timestamp(e.next_attempt_ns))
    return msg


def dead_letter_to_pb(d: DeadLetter) -> wpb.DeadLetter:
    return wpb.DeadLetter(
        webhook_id=d.endpoint_id,
        event_id=d.event_id,
        event_type=d.event_type,
        attempts=d.attempts,
        last_error=d.last_error,
        failed_at=ns_to_timestamp(d.failed_at_ns),
        replaying=d.replaying,
    )


class WebhookServicer(wpb_grpc.WebhookServiceServicer):
    def __init__(self, admin: WebhookAdmin, circuit_threshold: int) -> None:
        self._admin = admin
        self._threshold = circuit_threshold

    async def AddWebhook(  # noqa: N802 - generated method name
        self, request: wpb.AddWebhookRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> wpb.Webhook:
        w = request.webhook
        async with AbortOnDomainError(context):
            endpoint = await self._admin.add(
                w.id,
                w.url,
                request.secret,
                tuple(w.types),
                tuple(w.zone_ids),
                tuple(w.driver_ids),
                request.after_id if request.HasField("after_id") else None,
            )
        return webhook_to_pb(endpoint, self._threshold)

    async def ListWebhooks(  # noqa: N802
        self, request: wpb.ListWebhooksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> wpb.ListWebhooksResponse:
        async with AbortOnDomainError(context):
            endpoints = await self._admin.endpoints()
        return wpb.ListWebhooksResponse(
            webhooks=[webhook_to_pb(e, self._threshold) for e in endpoints]
        )

    async def RemoveWebhook(  # noqa: N802
        self, request: wpb.RemoveWebhookRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> wpb.RemoveWebhookResponse:
        async with AbortOnDomainError(context):
            await self._admin.remove(request.id)
        return wpb.RemoveWebhookResponse()

    async def TestWebhook(  # noqa: N802
        self, request: wpb.TestWebhookRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> wpb.TestWebhookResponse:
        async with AbortOnDomainError(context):
            outcome = await self._admin.test(request.id)
        response = wpb.TestWebhookResponse(
            ok=outcome.ok, http_status=outcome.status, error=outcome.error
        )
        response.duration.FromNanoseconds(int(outcome.duration_s * 1e9))
        return response

    async def ListDeadLetters(  # noqa: N802
        self, request: wpb.ListDeadLettersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> wpb.ListDeadLettersResponse:
        async with AbortOnDomainError(context):
            letters = await self._admin.dead_letters(
                request.id, request.after_event_id, request.page_size
            )
        return wpb.ListDeadLettersResponse(dead_letters=[dead_letter_to_pb(d) for d in letters])

    async def Replay(  # noqa: N802
        self, request: wpb.ReplayRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> wpb.ReplayResponse:
        async with AbortOnDomainError(context):
            queued = await self._admin.replay(request.id, list(request.event_ids))
        return wpb.ReplayResponse(queued=queued)

    async def RotateSecret(  # noqa: N802
        self, request: wpb.RotateSecretRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> wpb.Webhook:
        overlap_s = request.overlap.ToNanoseconds() / 1e9
        async with AbortOnDomainError(context):
            endpoint = await self._admin.rotate_secret(request.id, request.secret, overlap_s)
        return webhook_to_pb(endpoint, self._threshold)
