"""How the CLI prints node log lines and ``node_log`` events."""

from __future__ import annotations

from service.cli._common import describe_event
from service.cli.client import follow_line
from service.cli.logs import log_line_text

LINE = {
    "node_id": "total",
    "attempt": 1,
    "seq": 3,
    "at": "2026-12-04T13:13:22.193Z",
    "level": "warning",
    "message": "large quantity",
    "fields": {"sku": "A-1", "n": 12},
}


def test_a_line_is_time_node_level_message_and_fields() -> None:
    assert log_line_text(LINE) == '13:13:22.193 total WARNING large quantity sku="A-1" n=12'
    assert (
        log_line_text({**LINE, "level": "info", "fields": {}}) == "13:13:22.193 total INFO    large quantity"
    )


def test_a_multi_line_message_stays_readable() -> None:
    text = log_line_text({**LINE, "message": "failed\nTraceback\r\n  x", "fields": {}})
    assert text == "13:13:22.193 total WARNING failed\n    Traceback\\r\n      x"


def test_node_log_events_in_event_listings() -> None:
    data = {"node_id": "total", "attempt": 2, "lines": [LINE, LINE], "dropped": 0}
    assert describe_event("node_log", data) == "total attempt 2: 2 log lines"
    assert describe_event("node_log", {**data, "lines": [LINE], "dropped": 5}) == (
        "total attempt 2: 1 log line (5 dropped so far)"
    )
    assert follow_line({"type": "node_log", "data": data}) == "  ✎ total attempt 2: 2 log lines"
