"""`SHOAL_SERVER_URL` with several addresses (replicas of one control plane): parsed, tried in order."""

from __future__ import annotations

from shoal._client.server_process import ServerInfo, parse_urls


def test_several_urls_are_split_on_commas_and_trimmed() -> None:
    assert parse_urls("http://a:1/, http://b:2 ,,") == ["http://a:1", "http://b:2"]
    assert parse_urls("http://a:1") == ["http://a:1"]


def test_the_next_address_wraps_around_and_keeps_the_token() -> None:
    info = ServerInfo("http://a:1", "tok", urls=["http://a:1", "http://b:2", "http://c:3"])
    nxt = info.next_url()
    assert (nxt.url, nxt.token, nxt.urls) == ("http://b:2", "tok", info.urls)
    assert nxt.next_url().next_url().url == "http://a:1"


def test_one_address_has_no_other() -> None:
    info = ServerInfo("http://a:1", "tok")
    assert info.urls == ["http://a:1"]
    assert info.next_url() is info
