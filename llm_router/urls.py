"""URLs that callers give us, and the addresses we let our processes connect to for them.

One parser and one address guard, in the core, so the producer refuses at submit exactly the URLs the
worker would refuse to fetch (an image today, a webhook later), and no two parsers disagree about
which host a URL names: a URL that parsers could read differently (a backslash, credentials, a host
written as a bare or hexadecimal number, whitespace) is refused outright rather than interpreted.

* ``parse_url`` → ``ParsedURL`` (scheme, host, port; the URL itself, unchanged) or ``UnsafeURL``.
* ``AddressGuard`` decides whether a connection may go to an IP address: refused unless its caller
  allows private addresses or lists the address's network in its own allowlist (each caller has its
  setting, e.g. ``image_fetch_allowlist``): loopback, private (RFC 1918, ULA), link-local, IPv6
  site-local (``fec0::/10``: deprecated, but still routed inside some networks), CGNAT
  (100.64/10), multicast, unspecified and reserved ranges, and IPv6 forms embedding them (mapped,
  6to4, Teredo, NAT64); refused always: the cloud metadata addresses (``METADATA``).
* ``AddressGuard.check_url`` applies it to a URL whose host is an IP literal (a host name is checked
  by whoever resolves it: the worker's ``GuardedResolver`` keeps only allowed addresses).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HTTP_SCHEMES = ("http", "https")
MAX_URL_LENGTH = 8192

# cloud metadata and host-agent endpoints: refused even when private addresses are allowed
METADATA: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2/32",  # AWS ECS task metadata
        "fd00:ec2::254/128",  # AWS IMDS over IPv6
        "100.100.100.200/32",  # Alibaba Cloud
        "168.63.129.16/32",  # Azure WireServer
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# a host name: dot-separated labels of letters, digits and hyphens (IDNs arrive here as punycode)
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# a host that resolvers may read as a number (0x7f.1, 2130706433, 0177.0.0.1) but that is not a
# canonical dotted quad: refused, since getaddrinfo and a URL library may disagree about it
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*\.?$")


class UnsafeURL(ValueError):
    """A URL that is malformed, ambiguous or of a scheme the caller does not take."""


@dataclass(frozen=True, slots=True)
class ParsedURL:
    """A URL that parsed unambiguously: ``host`` is lower-case (an IPv6 literal without brackets)."""

    url: str
    scheme: str
    host: str
    port: int
    ip: IPAddress | None  # the host when it is an IP literal

    @property
    def default_port(self) -> bool:
        return self.port == (443 if self.scheme == "https" else 80)


def parse_url(url: object, *, schemes: tuple[str, ...] = HTTP_SCHEMES) -> ParsedURL:
    """``url`` checked and split; ``UnsafeURL`` saying what is wrong otherwise."""
    if not isinstance(url, str) or not url:
        raise UnsafeURL("a URL must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise UnsafeURL("a URL may not contain whitespace or control characters")
    if "\\" in url:
        # browsers read a backslash as a slash, other parsers as part of the host: refused
        raise UnsafeURL("a URL may not contain a backslash")
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() not in schemes:
        want = "an http(s)" if schemes == HTTP_SCHEMES else "a " + " or ".join(schemes)
        raise UnsafeURL(f"the URL must be {want} URL")
    if not rest.startswith("//"):
        raise UnsafeURL("the URL has no host (it must start with scheme://host)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"the URL cannot be parsed: {exc}") from None
    authority = parts.netloc
    if "@" in authority:
        raise UnsafeURL("a URL may not carry credentials (user@host)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeURL("the URL has no host")
    ip = _ip_literal(authority, host)
    if ip is None:
        host = _host_name(host)
    scheme = scheme.lower()
    return ParsedURL(
        url=url, scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80), ip=ip
    )


def _ip_literal(authority: str, host: str) -> IPAddress | None:
    hostport = authority.rsplit("@", 1)[-1]
    if hostport.startswith("["):
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise UnsafeURL("the URL's bracketed host is not an IPv6 address") from None
        if not isinstance(ip, ipaddress.IPv6Address) or "%" in host:
            raise UnsafeURL("the URL's bracketed host is not a plain IPv6 address")
        return ip
    try:
        ip4 = ipaddress.IPv4Address(host)
    except ValueError:
        if _NUMERIC_HOST.match(host):
            raise UnsafeURL("the URL's host is a number but not a dotted IPv4 address") from None
        return None
    return ip4


def _host_name(host: str) -> str:
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise UnsafeURL("the URL's host is not a valid host name") from None
    labels = ascii_host.split(".")
    if len(ascii_host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise UnsafeURL("the URL's host is not a valid host name")
    return ascii_host


def embedded_v4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64): each is checked too."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo:
        found.append(ip.teredo[1])
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def address_allowed(ip: IPAddress, *, allow_private: bool, exempt: Iterable[IPNetwork] = ()) -> bool:
    """Whether a connection may go to ``ip``; ``exempt`` networks pass even when private do not."""
    exempt = tuple(exempt)
    for embedded in embedded_v4(ip):
        if not address_allowed(embedded, allow_private=allow_private, exempt=exempt):
            return False
    if any(ip in net for net in METADATA if net.version == ip.version):
        return False
    if allow_private or any(ip in net for net in exempt if net.version == ip.version):
        return True
    # Python counts fec0::/10 as global (RFC 3879 deprecated it); networks that still use it are internal
    site_local = isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or site_local)


@dataclass(frozen=True, slots=True)
class AddressGuard:
    """One caller's policy: whether private addresses are allowed, and its own allowlist."""

    allow_private: bool = False
    allowlist: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, *, allow_private: bool, allowlist: Iterable[IPNetwork | str] = ()) -> AddressGuard:
        """A guard from settings (``allowlist`` as CIDR strings or networks)."""
        return cls(allow_private, tuple(ipaddress.ip_network(n, strict=False) for n in allowlist))

    def allows(self, ip: IPAddress) -> bool:
        return address_allowed(ip, allow_private=self.allow_private, exempt=self.allowlist)

    def check_url(self, parsed: ParsedURL) -> None:
        """``UnsafeURL`` when the URL's host is an IP literal the guard refuses."""
        if parsed.ip is not None and not self.allows(parsed.ip):
            raise UnsafeURL(f"the URL's address {parsed.ip} is not allowed (private or internal)")
