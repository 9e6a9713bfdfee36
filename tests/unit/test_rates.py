"""Rate-limit notation, the token bucket's arithmetic, and the flow-control options."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import persistq_async as pq
from persistq_async._rates import RateLimit, default_burst, parse_rate_limit
from persistq_async.config import resolve_options


@pytest.mark.parametrize(
    ("text", "count", "unit", "period"),
    [
        ("100/s", 100, "s", 1.0),
        ("5000/h", 5000, "h", 3600.0),
        ("10/m", 10, "m", 60.0),
        (" 7 / second ", 7, "s", 1.0),
        ("3/minutes", 3, "m", 60.0),
        ("1/Hour", 1, "h", 3600.0),
    ],
)
def test_parse_rate_limit(text: str, count: int, unit: str, period: float) -> None:
    rate = parse_rate_limit(text)
    assert (rate.count, rate.unit, rate.period) == (count, unit, period)
    assert rate.burst == default_burst(count)
    assert str(rate) == f"{count}/{unit}"


@pytest.mark.parametrize("text", ["", "100", "100/d", "0/s", "-1/s", "1.5/s", "/s", "10/ms", "a/s"])
def test_parse_rate_limit_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"100/s|at least 1"):
        parse_rate_limit(text)


def test_default_burst_is_a_tenth_at_least_one() -> None:
    assert [default_burst(n) for n in (1, 9, 10, 50, 100, 5000)] == [1, 1, 1, 5, 10, 500]


def test_bucket_refills_at_the_rate_and_caps_at_the_burst() -> None:
    rate = RateLimit(count=50, unit="s", burst=5)
    assert rate.per_second == 50
    assert rate.refill(0.0, 100.0, 100.1) == pytest.approx(5.0)
    assert rate.refill(0.0, 100.0, 100.04) == pytest.approx(2.0)
    assert rate.refill(2.0, 100.0, 99.0) == 2.0  # a clock that went back adds nothing
    assert rate.whole(2.9999) == 3  # epoch-second refills may come out a hair short
    assert rate.whole(2.99) == 2
    assert rate.next_token_at(0.5, 10.0) == pytest.approx(10.01)
    assert rate.next_token_at(1.0, 10.0) == 10.0


def test_a_bucket_never_hands_out_more_than_count_plus_burst_per_period() -> None:
    """Claims every 1 ms, taking every whole token: any 1-second window sees <= count + burst."""
    rate = RateLimit(count=50, unit="s", burst=5)
    tokens, at, claims = float(rate.burst), 0.0, []
    for step in range(5000):
        now = step / 1000
        tokens = rate.refill(tokens, at, now)
        at = now
        take = rate.whole(tokens)
        tokens -= take
        claims.extend([now] * take)
    for start in range(0, 4000):
        window = [t for t in claims if start / 1000 <= t < start / 1000 + 1.0]
        assert len(window) <= rate.count + rate.burst
    assert math.isclose(len(claims), 5 + 50 * 4.999, abs_tol=2)


def test_rate_limit_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="unit"):
        RateLimit(count=1, unit="d", burst=1)
    with pytest.raises(ValueError, match="burst"):
        RateLimit(count=1, unit="s", burst=0)


def test_flow_options_from_keywords_environment_and_file(tmp_path: Path) -> None:
    (tmp_path / "persistq.toml").write_text(
        'rate_limit = "10/m"\nmax_running = 3\ndead_letter_queue = "emails.dead"\n'
    )
    options = resolve_options({}, environ={}, cwd=tmp_path)
    assert (options.rate_limit, options.max_running, options.dead_letter_queue) == (
        "10/m",
        3,
        "emails.dead",
    )
    options = resolve_options(
        {"max_running": 4},
        environ={"PERSISTQ_RATE_LIMIT": "100/s", "PERSISTQ_RATE_BURST": "20"},
        cwd=tmp_path,
    )
    assert (options.rate_limit, options.rate_burst, options.max_running) == ("100/s", 20, 4)
    defaults = resolve_options({}, environ={}, cwd=tmp_path / "nowhere")
    assert (defaults.rate_limit, defaults.max_running, defaults.dead_letter_queue) == (
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("keywords", "environ", "message"),
    [
        ({"rate_limit": "fast"}, {}, r"option 'rate_limit' from keyword argument: must be a count"),
        ({"rate_limit": 100}, {}, "option 'rate_limit' from keyword argument: expected a string"),
        ({}, {"PERSISTQ_RATE_LIMIT": "100/d"}, "environment variable PERSISTQ_RATE_LIMIT"),
        ({"max_running": 0}, {}, "option 'max_running' from keyword argument: must be >= 1"),
        ({"max_running": True}, {}, "expected an integer"),
        ({}, {"PERSISTQ_MAX_RUNNING": "seven"}, "PERSISTQ_MAX_RUNNING: expected an integer"),
        ({"rate_burst": 0}, {}, "option 'rate_burst'"),
        ({"dead_letter_queue": ""}, {}, "option 'dead_letter_queue'"),
        ({"dead_letter_queue": 3}, {}, "option 'dead_letter_queue'"),
    ],
)
def test_bad_flow_options_raise_config_error(
    tmp_path: Path, keywords: dict[str, object], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(pq.ConfigError, match=message):
        resolve_options(keywords, environ=environ, cwd=tmp_path)


def test_bad_flow_option_in_a_file(tmp_path: Path) -> None:
    (tmp_path / "persistq.toml").write_text("max_running = -2\n")
    with pytest.raises(pq.ConfigError, match=r"max_running' from .*persistq.toml: must be >= 1"):
        resolve_options({}, environ={}, cwd=tmp_path)


def test_queue_refuses_itself_as_dead_letter_queue_and_a_lone_burst() -> None:
    with pytest.raises(pq.ConfigError, match="its own dead-letter queue"):
        pq.Queue("x.db", name="emails", dead_letter_queue="emails")
    with pytest.raises(pq.ConfigError, match="rate_burst"):
        pq.Queue("x.db", name="emails", rate_burst=3)
