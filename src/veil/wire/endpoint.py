"""What a node endpoint may be: `http(s)://host[:port]` in one spelling, nothing else.

A node's endpoint is where the relay sends other people's bytes (`/gateway`,
`/.well-known/...` are appended to it), and anyone who stakes the minimum may register one. A
path, query, fragment or userinfo would let a staker aim those requests at a chosen resource
on someone else's server, and a second spelling of one address (upper case, a default port, a
numeric host such as `2130706433`) would let it slip past a comparison. So one rule, used by
the node before it registers, the relay's node list, the client's discovery and (coarsely:
allowed bytes only) the NodeRegistry contract:

* scheme `http` or `https`, lower case, then `://`;
* host: a lower-case DNS name (letters, digits, hyphens; dot-separated labels of 1-63
  characters; no trailing dot; the last label not all digits), a dotted-quad IPv4 address in
  its shortest form, or a bracketed IPv6 address in its compressed form (no zone);
* port: optional; when given, decimal 1-65535 without leading zeros and not the scheme's
  default (80 for http, 443 for https: that endpoint is spelled without it);
* nothing else: no path (not even `/`), query, fragment, userinfo, escape or space.

Whether the host may be contacted (loopback, private ranges...) is not this module's
question: that depends on who connects, and is `veil.relay.egress`'s.
"""

from __future__ import annotations

import ipaddress
import re

from veil.errors import VeilError

__all__ = ["MAX_ENDPOINT_LENGTH", "EndpointError", "check_endpoint", "is_canonical_endpoint"]

MAX_ENDPOINT_LENGTH = 256  # what the NodeRegistry stores (String[256])
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_FORM = "an endpoint must be http(s)://host[:port]"
_FORBIDDEN = (
    ("/", "a path"),
    ("\\", "a backslash (some parsers read it as '/')"),
    ("?", "a query"),
    ("#", "a fragment"),
    ("@", "userinfo"),
    ("%", "a percent escape"),
)


class EndpointError(VeilError, ValueError):
    """A node endpoint that is not canonical; the message says which part is wrong."""


def _host_problem(host: str) -> str | None:
    """Why `host` is not a canonical host, or None."""
    if host.startswith("["):
        inner = host[1:-1] if host.endswith("]") else ""
        try:
            address = ipaddress.IPv6Address(inner)
        except ValueError:
            return "not an IPv6 address in brackets"
        if address.ipv4_mapped is not None:
            return "IPv4-mapped IPv6 address (write the IPv4 address)"
        if str(address) != inner:
            return f"IPv6 address not in compressed form (write [{address}])"
        return None
    if len(host) > 253:
        return "host name longer than 253 characters"
    labels = host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return "host is not a lower-case DNS name or an IP address"
    if labels[-1].isdigit():  # an IPv4 address, or a number a resolver would read as one
        try:
            ipaddress.IPv4Address(host)  # strict: four decimal parts, no leading zeros
        except ValueError:
            return "numeric host that is not a dotted-quad IPv4 address"
    return None


def _problem(endpoint: str) -> str | None:
    """Why `endpoint` is not canonical, or None."""
    if not endpoint.isascii() or not endpoint.isprintable() or " " in endpoint:
        return "non-ASCII, control or space characters"
    if len(endpoint) > MAX_ENDPOINT_LENGTH:
        return f"longer than {MAX_ENDPOINT_LENGTH} characters"
    scheme, sep, authority = endpoint.partition("://")
    if not sep or scheme not in _DEFAULT_PORTS:
        return "scheme must be http:// or https:// (lower case)"
    for bad, what in _FORBIDDEN:
        if bad in authority:
            return f"{what} is not allowed"
    host, port = authority, ""
    if authority.startswith("["):
        close = authority.find("]")
        if close != -1 and authority[close + 1 :].startswith(":"):
            host, port = authority[: close + 1], authority[close + 2 :]
    elif ":" in authority:
        host, _, port = authority.partition(":")
        if ":" in port:
            return "more than one ':'"
    if not host:
        return "no host"
    problem = _host_problem(host)
    if problem is not None:
        return problem
    if port or authority.endswith(":"):
        if not _PORT.fullmatch(port) or int(port) > 65535:
            return "port must be 1-65535 in decimal, without leading zeros"
        if int(port) == _DEFAULT_PORTS[scheme]:
            return f"the default port {port} is written by leaving it out"
    return None


def check_endpoint(endpoint: str) -> str:
    """`endpoint` itself when canonical, else `EndpointError` saying why (never normalised:
    the registered string is what everyone compares)."""
    problem = _problem(endpoint) if isinstance(endpoint, str) else "not a string"
    if problem is not None:
        raise EndpointError(f"{_FORM}: {endpoint!r}: {problem}")
    return endpoint


def is_canonical_endpoint(endpoint: str) -> bool:
    """True when `check_endpoint` would take `endpoint`."""
    return isinstance(endpoint, str) and _problem(endpoint) is None
