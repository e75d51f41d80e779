"""The core's URL parser and address guard: what the producer refuses at submit and the worker's
fetchers refuse to reach (``llm_router.urls``)."""

from __future__ import annotations

import ipaddress

import pytest

from llm_router.urls import AddressGuard, UnsafeURL, address_allowed, parse_url


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("https://example.com/a.png", "example.com", 443),
        ("http://example.com:8080/a.png?x=1#f", "example.com", 8080),
        ("HTTPS://Example.COM./a.png", "example.com", 443),
        ("https://[2606:4700::1111]/a.png", "2606:4700::1111", 443),
        ("http://93.184.216.34/a.png", "93.184.216.34", 80),
        ("https://bücher.example/a.png", "xn--bcher-kva.example", 443),
    ],
)
def test_urls_that_parse_one_way(url: str, host: str, port: int) -> None:
    parsed = parse_url(url)
    assert (parsed.host, parsed.port, parsed.url) == (host, port, url)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://example.com\\@10.0.0.1/a.png", "backslash"),  # browsers: host example.com; others: 10.0.0.1
        ("http:\\\\example.com/a.png", "backslash"),
        ("http://user:pw@example.com/a.png", "credentials"),
        ("http://example.com@10.0.0.1/", "credentials"),
        ("http://2130706433/", "number"),  # getaddrinfo reads it as 127.0.0.1
        ("http://0x7f.1/", "number"),
        ("http://0177.0.0.1/", "number"),
        ("http://127.1/", "number"),
        ("ftp://example.com/a.png", "http(s)"),
        ("file:///etc/passwd", "http(s)"),
        ("javascript:alert(1)", "http(s)"),
        ("https:example.com/a.png", "no host"),
        ("https:///a.png", "no host"),
        ("https://exa mple.com/", "whitespace"),
        ("https://example.com/\n", "whitespace"),
        ("https://example.com:99999/", "cannot be parsed"),
        ("https://[::1%25eth0]/", "IPv6"),
        ("https://exa_mple.com/", "host name"),
        ("", "non-empty"),
    ],
)
def test_ambiguous_or_malformed_urls_are_refused(url: str, words: str) -> None:
    with pytest.raises(UnsafeURL) as info:
        parse_url(url)
    assert words in str(info.value)


def test_the_guard_checks_ip_literals_with_its_callers_allowlist() -> None:
    strict = AddressGuard.of(allow_private=False)
    listed = AddressGuard.of(allow_private=False, allowlist=["10.0.0.0/8"])
    for guard in (strict, listed):
        guard.check_url(parse_url("https://example.com/"))  # a name: checked where it is resolved
        guard.check_url(parse_url("https://8.8.8.8/"))
    with pytest.raises(UnsafeURL, match=r"10\.1\.2\.3"):
        strict.check_url(parse_url("http://10.1.2.3/"))
    listed.check_url(parse_url("http://10.1.2.3/"))
    with pytest.raises(UnsafeURL):  # metadata: never, whatever the allowlist says
        AddressGuard.of(allow_private=True, allowlist=["169.254.0.0/16"]).check_url(
            parse_url("http://169.254.169.254/latest")
        )


@pytest.mark.parametrize(
    ("address", "default", "with_private"),
    [
        ("8.8.8.8", True, True),
        ("2606:4700:4700::1111", True, True),
        ("127.0.0.1", False, True),
        ("::1", False, True),
        ("10.1.2.3", False, True),
        ("172.16.0.1", False, True),
        ("192.168.1.1", False, True),
        ("100.64.0.1", False, True),  # CGNAT
        ("169.254.1.1", False, True),  # link-local
        ("fe80::1", False, True),
        ("fd12:3456::1", False, True),  # unique local
        ("fec0::1", False, True),  # site-local (deprecated, still internal where used)
        ("fefe:1::2", False, True),
        ("224.0.0.1", False, True),  # multicast
        ("0.0.0.0", False, True),
        ("::ffff:127.0.0.1", False, True),  # IPv4-mapped loopback
        ("::ffff:10.0.0.1", False, True),
        ("2002:a00:1::", False, True),  # 6to4 of 10.0.0.1
        ("64:ff9b::a00:1", False, True),  # NAT64 of 10.0.0.1
        ("169.254.169.254", False, False),  # metadata: never
        ("fd00:ec2::254", False, False),
        ("100.100.100.200", False, False),
        ("168.63.129.16", False, False),
        ("::ffff:169.254.169.254", False, False),
    ],
)
def test_address_policy(address: str, default: bool, with_private: bool) -> None:
    ip = ipaddress.ip_address(address)
    assert address_allowed(ip, allow_private=False) is default
    assert address_allowed(ip, allow_private=True) is with_private
