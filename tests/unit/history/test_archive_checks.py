"""The pure parts of archiving: the checks of a partly archived run's kept tail, which seqs an
archive import puts back, and the archive command's cutoff (no database, no files)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.envelope import RawEnvelope
from service.cli.archive import CutoffType, latest_cutoff
from service.history.audit import AuditProblem, TailVerifier
from service.history.bundle import _archive_gap
from tests.helpers.hash_chains import flip_data_byte, rehash_with_other_data, remove_event
from tests.helpers.strategies import chains


def tail_problems(tail: list[RawEnvelope]) -> tuple[list[AuditProblem], TailVerifier]:
    problems: list[AuditProblem] = []
    verifier = TailVerifier(tail[0].run_id, problems)
    for event in tail:
        verifier.feed(event)
    return problems, verifier


@given(chains(min_events=2, max_events=10), st.data())
def test_any_tail_of_an_intact_chain_is_clean_and_ends_in_its_head(
    chain: list[RawEnvelope], data: st.DataObject
) -> None:
    start = data.draw(st.integers(0, len(chain) - 1))
    problems, verifier = tail_problems(chain[start:])
    assert problems == []
    assert (verifier.last_seq, verifier.last_hash) == (chain[-1].seq, chain[-1].hash)


@given(chains(min_events=3, max_events=10), st.data())
def test_a_tampered_tail_is_reported(chain: list[RawEnvelope], data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(chain) - 3))
    index = data.draw(st.integers(start, len(chain) - 2))
    how = data.draw(st.sampled_from(["byte", "rehash", "remove"]))
    if how == "byte":
        position = data.draw(st.integers(0, len(chain[index].data) - 1))
        new = (bytes(chain[index].data)[position] + 1) % 256
        tampered = flip_data_byte(chain, index, position, new)[0]
    elif how == "rehash":
        tampered = rehash_with_other_data(chain, index, bytes(chain[index].data) + b" ")[0]
    else:
        tampered = remove_event(chain, index + 1 if index + 1 < len(chain) - 1 else index)[0]
    problems, _ = tail_problems(tampered[start:])
    assert problems, how


def test_archive_gap_names_the_missing_seqs_and_the_first_conflict() -> None:
    want = [(seq, f"e{seq}", f"h{seq}") for seq in range(5)]
    assert _archive_gap([], want) == ({0, 1, 2, 3, 4}, None)
    assert _archive_gap(want[3:], want) == ({0, 1, 2}, None)
    assert _archive_gap(want, want) == (set(), None)
    other = [(3, "x", "h3"), (4, "e4", "h4")]
    assert _archive_gap(other, want) == (set(), 3)
    longer = [*want, (5, "e5", "h5")]
    assert _archive_gap(longer, want) == (set(), 5)


def test_the_cutoff_is_a_date_or_a_time_in_utc_and_at_most_tomorrow() -> None:
    cutoff = CutoffType()
    assert cutoff.convert("2026-01-02", None, None) == datetime(2026, 1, 2, tzinfo=UTC)
    assert cutoff.convert("2026-01-02T03:04:05+02:00", None, None) == datetime(
        2026, 1, 2, 1, 4, 5, tzinfo=UTC
    )
    assert cutoff.convert("2026-01-02T03:04:05", None, None) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    for bad in ("yesterday", "2026-02-30", ""):
        with pytest.raises(click.BadParameter, match="is not a date"):
            cutoff.convert(bad, None, None)
    now = datetime(2026, 12, 4, 23, 59, tzinfo=UTC)
    assert latest_cutoff(now) == datetime(2026, 12, 5, tzinfo=UTC)
    assert latest_cutoff(now + timedelta(minutes=2)) == datetime(2026, 12, 6, tzinfo=UTC)
