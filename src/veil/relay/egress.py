"""Where the relay may connect: a node's registered host, resolved once, checked, pinned.

Anyone who stakes the minimum can register an endpoint, and the relay then sends bytes of its
callers' choosing there. Without a check that makes the relay a request forger into its own
network: the chain's RPC, a user's local gateway, a cloud metadata service, any local port.
So every connection the relay opens to a node goes through `GuardedBackend`:

1. the host is resolved once (`Resolver`; the system resolver by default);
2. every address it resolved to is checked (`refusal`): loopback, private (RFC 1918, ULA),
   link-local, multicast, unspecified, reserved, shared (CGNAT) and anything else not
   globally routable are refused, and so are the addresses that embed one (IPv4-mapped, 6to4,
   NAT64); cloud metadata addresses are refused always. A name with any refused address is
   refused whole: it has no business mixing public and private answers;
3. the socket is opened to a checked address itself, never to the name again, so a DNS answer
   that changes between the check and the connect (rebinding) cannot redirect it.

Why a network backend rather than rewriting each URL to the IP (with `Host` and the
`sni_hostname` extension kept as the name): the check then sits at the one place every
connection is made, keys lists, descriptors and ticket offers included, so no call path can
forget it; and the connection pool, the `Host` header and TLS (SNI and certificate check)
all stay keyed by the name, so two nodes behind one address never share a TLS session made
for the other's name.

`allow_private=True` (`veil relay serve --allow-private-endpoints`, which `veil up` sets since
its nodes listen on 127.0.0.1) lifts every refusal but the cloud metadata one: for devnets only.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import anyio
import httpcore
import httpx

__all__ = [
    "METADATA_ADDRESSES",
    "GuardedBackend",
    "Resolver",
    "guarded_transport",
    "refusal",
    "system_resolve",
]

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses to try, in order.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

# Cloud instance metadata services (AWS, GCP, Azure, OpenStack; AWS over IPv6; Alibaba;
# Oracle): refused even on a devnet, where no node listens there.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_MAX_ADDRESSES = 3  # addresses of one name tried in turn before giving up


def _embedded(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), else `address`."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def refusal(address: str | IPAddress, *, allow_private: bool = False) -> str | None:
    """Why the relay must not connect to `address`, or None when it may."""
    try:
        ip = _embedded(ipaddress.ip_address(address))
    except ValueError:
        return "not an IP address"
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if allow_private:  # a devnet: its nodes listen on loopback or a private network
        return None
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED, "a shared (CGNAT) address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a globally routable address"),
    )
    return next((why for hit, why in checks if hit), None)


async def system_resolve(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver, in its order, without repeats."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to checked, pinned addresses."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        resolve: Resolver = system_resolve,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.allow_private = allow_private
        self._resolve = resolve
        self._inner = inner or httpcore.AnyIOBackend()

    async def addresses(self, host: str, port: int, timeout: float | None = None) -> list[str]:
        """The checked addresses of `host`; `httpcore.ConnectError` if any is refused (or
        none resolve), `httpcore.ConnectTimeout` if resolving takes longer than `timeout`."""
        try:
            with anyio.fail_after(timeout):
                found = list(await self._resolve(host, port))
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as err:
            raise httpcore.ConnectError(f"cannot resolve {host}: {err}") from None
        if not found:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        for address in found:
            why = refusal(address, allow_private=self.allow_private)
            if why is not None:
                log.warning("relay: refusing to connect to %s: %s is %s", host, address, why)
                raise httpcore.ConnectError(f"{host} resolves to a refused address")
        return found

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        failure: Exception = httpcore.ConnectError(f"cannot connect to {host}")
        for address in (await self.addresses(host, port, timeout))[:_MAX_ADDRESSES]:
            try:  # the checked address itself: the name is not resolved again
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as err:
                failure = err
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("the relay reaches nodes over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(backend: GuardedBackend) -> httpx.AsyncHTTPTransport:
    """httpx's own transport (request and response mapping, errors as `httpx.HTTPError`)
    whose connection pool opens every connection through `backend`.

    httpx takes no network backend, so the pool it builds is replaced by one that does;
    httpx is pinned, and a version without that pool fails here, at startup, not open.
    """
    transport = httpx.AsyncHTTPTransport()
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError("this httpx version keeps no connection pool the relay can guard")
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=backend,
    )
    return transport
