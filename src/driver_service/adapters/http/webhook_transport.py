"""WebhookTransport on httpx: one POST per delivery, every address checked at delivery time.

The URL's host is resolved here, every address it resolves to is checked (unless private
targets are allowed) and the connection goes to one of those checked addresses, with the
host name kept for the Host header, SNI and certificate verification: a DNS answer that
changes between the check and the connect (rebinding) cannot redirect a delivery to an
internal address. Redirects are not followed (a 3xx is a failed delivery) and proxy settings
from the environment are ignored (a proxy would connect where we did not check).

httpx: a maintained async HTTP client with per-phase timeouts, connection pooling and an
`sni_hostname` extension that lets us connect to a checked IP while verifying the name.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Mapping
from ipaddress import ip_address
from urllib.parse import urlsplit, urlunsplit

import httpx

from driver_service.domain.webhooks import ForbiddenTarget, refused_address
from driver_service.ports import DeliveryError

#: Bytes of a response body read (and thrown away) so the connection can be reused.
MAX_RESPONSE_BYTES = 64 * 1024


def _is_ip(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


class HttpxWebhookTransport:
    def __init__(
        self,
        *,
        allow_private: bool = False,
        max_connections: int = 64,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._allow_private = allow_private
        self._max_connections = max_connections
        self._verify = verify
        #: Made at the first POST: a server without webhooks neither builds nor closes one.
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    def _http(self) -> httpx.AsyncClient:
        if self._closed:
            raise DeliveryError("shutting down")
        if self._client is None:
            self._client = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                verify=self._verify,
                limits=httpx.Limits(max_connections=self._max_connections, keepalive_expiry=30.0),
            )
        return self._client

    async def _addresses(self, host: str, port: int) -> list[str]:
        if _is_ip(host):
            return [host]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise DeliveryError(f"cannot resolve {host}: {exc}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise DeliveryError(f"{host} resolves to no address")
        return addresses

    async def _checked(self, url: str) -> tuple[str, str]:
        """(a checked address to connect to, the host name)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = await self._addresses(host, port)
        if not self._allow_private:
            for address in addresses:
                why = refused_address(address)
                if why is not None:
                    raise ForbiddenTarget(
                        f"webhook host {host} resolves to {why}"
                        " (allowed only with the server's --webhook-allow-private)"
                    )
        return addresses[0], host

    async def check_target(self, url: str) -> None:
        try:
            await self._checked(url)
        except DeliveryError:
            # Registration does not require the host to resolve now (DNS may come later);
            # every delivery checks again.
            return

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout_s: float
    ) -> int:
        address, host = await self._checked(url)
        client = self._http()
        parts = urlsplit(url)
        literal = f"[{address.split('%')[0]}]" if ":" in address else address
        netloc = literal if parts.port is None else f"{literal}:{parts.port}"
        target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        host_header = parts.netloc.rsplit("@", 1)[-1]
        send = {**headers, "host": host_header, "user-agent": "driver-service-webhooks"}
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        try:
            async with asyncio.timeout(timeout_s):
                async with client.stream(
                    "POST",
                    target,
                    content=body,
                    headers=send,
                    timeout=timeout_s,
                    extensions=extensions,
                ) as response:
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read >= MAX_RESPONSE_BYTES:
                            break
                    return response.status_code
        except TimeoutError:
            raise DeliveryError(f"no response within {timeout_s:g} s") from None
        except httpx.TimeoutException:
            raise DeliveryError(f"no response within {timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}"[:200]) from None

    async def close(self) -> None:
        """Close the pool (deliveries are stopped first: nothing is in flight)."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
