"""Which addresses a result file may be downloaded from (see flows.generation.safe_fetch).

Apart from the downloader so that the settings, which validate RESULT_FETCH_ALLOW
with it, load without aiohttp (editors' commands read every setting)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SCHEMES = frozenset({"http", "https"})
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")


class FetchError(Exception):
    """The download did not work (network, status, time): the user gets a link instead."""


class FetchRefused(FetchError):
    """The policy forbids this download (address, scheme, redirects, size)."""


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for, if any: the network would deliver to it."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def _special(address: IPAddress) -> str | None:
    """Why `address` is not on the public internet, or None when it is."""
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "not public"
    return None


def _parse_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # a zone id names no other host
    except ValueError:
        return None


def _normal_host(host: str) -> str:
    return host.lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Which addresses a result may be downloaded from: the public internet, plus
    `networks` and the hosts named in `hosts` (both empty in production)."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> FetchPolicy:
        """From allow-list entries: an IP address, a network ("10.0.0.0/8") or a host name.
        Raises ValueError on anything else (a URL, a port, a wildcard)."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                raise ValueError("an empty allow-list entry")
            if _parse_address(entry) is not None or "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise ValueError(f"{entry!r} is not an address or a network") from None
                continue
            name = _normal_host(entry)
            labels = name.split(".")
            numeric = name.replace(".", "").isdigit()  # "127.1": no name, no address
            if not name or set(name) - _HOST_CHARS or "" in labels or numeric:
                raise ValueError(f"{entry!r} is not an address, a network or a host name")
            hosts.add(name)
        return cls(tuple(networks), frozenset(hosts))

    def host_allowed(self, host: str) -> bool:
        """True when `host` is on the allow-list by name (its addresses are trusted)."""
        return _normal_host(host) in self.hosts

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why `address` may not be fetched from, or None when it may."""
        ip = address if not isinstance(address, str) else _parse_address(address)
        if ip is None:
            return f"{address} is not an IP address"
        inner = _embedded_ipv4(ip)
        if any(a in net for a in (ip, inner) if a is not None for net in self.networks):
            return None
        # An IPv6 form of an IPv4 address reaches that IPv4 address: judge that one.
        why = _special(inner if inner is not None else ip)
        return None if why is None else f"{ip} is {why}"

    def check_url(self, url: URL) -> None:
        """Refuses a URL whose scheme is not http(s) or whose host is a forbidden address.
        A host name passes here; its addresses are checked when it is resolved."""
        if url.scheme not in _SCHEMES:
            raise FetchRefused(f"the scheme {url.scheme!r} is refused (http and https only)")
        host = url.raw_host
        if not host:
            raise FetchRefused("a URL with no host is refused")
        if self.host_allowed(host):
            return
        address = _parse_address(host)
        if address is None:
            # aiohttp hands hosts that look numeric straight to the socket, which maps
            # legacy forms ("2130706433", "127.1") onto addresses: refuse them here.
            if ":" in host or host.replace(".", "").isdigit():
                raise FetchRefused(f"{host} is not a canonical IP address")
            return
        if (why := self.refusal(address)) is not None:
            raise FetchRefused(why)
