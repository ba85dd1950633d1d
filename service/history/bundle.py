"""Self-verifying audit bundles: export runs, verify a bundle offline, import it elsewhere.

A bundle is NDJSON, one JSON object per line, each line ending in ``\\n``:

1. a header ``{"bundle":"header","format_version":1,"exported_at":...,"runs":[...]}``;
2. for each run (in the header's order) a run line ``{"bundle":"run","run_id",
   "tenant","workflow_id","workflow_version","spec"}`` (``spec`` is the workflow
   version the run executed, ``null`` when it is not registered), then every event
   of the run in seq order, each the stored envelope exactly as the API serves it
   (``hash``, ``prev_hash`` and the body bytes verbatim);
   After a run's events, a blob line ``{"bundle":"blob","sha256","size_bytes","value"}``
   for each output stored as a blob that its events reference and that no earlier
   section carried (``value`` is the blob's JSON bytes verbatim; format version 2,
   written only when there are blobs, so bundles without blobs stay version 1);
3. a digest line ``{"bundle":"digest","sha256":...,"runs":{run_id: {"events",
   "head_hash"}}}``: SHA-256 over the bytes of every line before it (newlines
   included), and each run's event count and head hash.

Guarantees:
- ``verify_bundle`` needs no database: it re-checks every run as the audit does
  (chain, seq, schema, legality), the digest, and that the digest line is in the
  canonical form this module writes. Any changed byte, removed, added or
  reordered line, or event re-hashed in place is reported. A forger who rewrites
  the whole bundle consistently is not: compare the digest with the one printed
  at export time (``--expect-digest``) for that. Every blob line must hash to its
  ``sha256`` and have its ``size_bytes``; every blob a run references must have
  a line, and every blob line must be referenced.
- ``import_bundle`` refuses a bundle that does not verify and writes nothing
  then; it keeps every event exactly (event_id, seq, recorded_at, prev_hash,
  hash, body bytes), so the chain still verifies in the target log; importing
  the same bundle again writes nothing. Its workflow versions are registered with
  their original registration time, in the same transaction, and so are its
  blobs (a blob the target already holds is left as it is: same key, same bytes).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from schemas.codec import encode, raw_envelope_decoder
from schemas.envelope import RawEnvelope
from schemas.names import DB_SCHEMA
from schemas.workflow import WorkflowSpec, spec_version
from service.history.audit import AuditProblem, ProblemKind, RunVerifier, plural, sort_key
from service.infra.db import Conn
from service.store.archive_sql import (
    Partition,
    archive_with_digest_conn,
    attached_partitions_conn,
    detached_partitions_conn,
    restore_partition_conn,
)
from service.store.blobs import Blob, BlobStore, insert_blobs_txn
from service.store.bundle_sql import event_id_users, register_version_txn, stored_chains
from service.store.event_store import EventStore, RunArchived
from service.store.workflow_store import UnknownWorkflow, WorkflowStore

FORMAT_VERSION = 1
"""Version of the bundle layout written by this module for bundles without blobs."""
BLOBS_FORMAT_VERSION = 2
"""Version of a bundle that carries blob lines (a reader of version 1 refuses it clearly)."""
READ_FORMAT_VERSIONS = (FORMAT_VERSION, BLOBS_FORMAT_VERSION)


class _Line(msgspec.Struct, frozen=True, tag_field="bundle", forbid_unknown_fields=True):
    """A bundle line other than an event (tag field ``bundle``)."""


class BundleHeader(_Line, frozen=True, tag="header"):
    format_version: int
    exported_at: datetime
    runs: list[UUID]


class BundleRun(_Line, frozen=True, tag="run"):
    run_id: UUID
    tenant: str
    workflow_id: str
    workflow_version: str
    spec: WorkflowSpec | None = None
    spec_registered_at: datetime | None = None
    """When the version was registered at the source: an import keeps it, so an old version
    never becomes the target's latest one."""


class RunHead(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    events: int
    head_hash: str


class BundleDigest(_Line, frozen=True, tag="digest"):
    sha256: str
    runs: dict[str, RunHead]


class BundleBlob(_Line, frozen=True, tag="blob"):
    """A node output stored as a blob: its JSON bytes verbatim, its key and size."""

    sha256: str
    size_bytes: int
    value: msgspec.Raw


_meta_decoder = msgspec.json.Decoder(BundleHeader | BundleRun | BundleDigest | BundleBlob)
_META_PREFIX = b'{"bundle":'
_DIGEST_PREFIX = b'{"bundle":"digest"'


@dataclass
class RunExport:
    """One run of a bundle: its run line, its events in seq order, and the blobs they reference."""

    run: BundleRun
    events: list[RawEnvelope]
    blobs: dict[str, bytes] = field(default_factory=dict)


# -- writing ---------------------------------------------------------------------------------------


def bundle_lines(runs: Sequence[RunExport], exported_at: datetime) -> Iterator[bytes]:
    """The bundle's lines (each ending in a newline), the digest line last."""
    digest = hashlib.sha256()
    heads: dict[str, RunHead] = {}

    def emit(line: bytes) -> bytes:
        digest.update(line)
        return line

    version = BLOBS_FORMAT_VERSION if any(r.blobs for r in runs) else FORMAT_VERSION
    yield emit(_header_line(version, exported_at, [r.run.run_id for r in runs]))
    carried: set[str] = set()
    for run in runs:
        for line in _section_lines(run, carried):
            yield emit(line)
        heads[str(run.run.run_id)] = _run_head(run)
    yield encode(BundleDigest(digest.hexdigest(), heads)) + b"\n"


def _header_line(version: int, exported_at: datetime, run_ids: list[UUID]) -> bytes:
    return encode(BundleHeader(version, exported_at, run_ids)) + b"\n"


def _section_lines(run: RunExport, carried: set[str]) -> Iterator[bytes]:
    """A run's section: its run line, its events, then the blobs no earlier section carried."""
    yield encode(run.run) + b"\n"
    for event in run.events:
        # The envelope as stored: a raw body is embedded byte for byte, never re-encoded.
        yield encode(event) + b"\n"
    for sha, data in sorted(run.blobs.items()):
        if sha not in carried:
            carried.add(sha)
            yield encode(BundleBlob(sha, len(data), msgspec.Raw(data))) + b"\n"


def _run_head(run: RunExport) -> RunHead:
    return RunHead(len(run.events), run.events[-1].hash if run.events else "")


class BundleSpool:
    """A bundle too large to hold in memory, built run by run: each run's section is spooled to
    a temporary file as it comes, and ``write`` then writes the bundle (the same lines as
    ``bundle_lines`` would for the same runs: header, sections, digest line)."""

    def __init__(self, directory: Path) -> None:
        self._spool = tempfile.TemporaryFile(dir=directory)
        self._carried: set[str] = set()
        self.run_ids: list[UUID] = []
        self.heads: dict[str, RunHead] = {}
        self.events = 0
        self._blobs = False

    def add(self, run: RunExport) -> None:
        for line in _section_lines(run, self._carried):
            self._spool.write(line)
        self.run_ids.append(run.run.run_id)
        self.heads[str(run.run.run_id)] = _run_head(run)
        self.events += len(run.events)
        self._blobs = self._blobs or bool(run.blobs)

    def close(self) -> None:
        self._spool.close()

    def write(self, path: Path, exported_at: datetime) -> str:
        """Write the bundle to ``path`` atomically and durably (``write_bundle``); returns its digest."""
        version = BLOBS_FORMAT_VERSION if self._blobs else FORMAT_VERSION
        digest = hashlib.sha256()
        spool = self._spool

        def lines() -> Iterator[bytes]:
            header = _header_line(version, exported_at, self.run_ids)
            digest.update(header)
            yield header
            spool.seek(0)
            while chunk := spool.read(1 << 20):
                digest.update(chunk)
                yield chunk
            yield encode(BundleDigest(digest.hexdigest(), self.heads)) + b"\n"

        write_bundle(path, lines())
        return digest.hexdigest()


def bundle_digest(lines: Iterable[bytes]) -> str:
    """The SHA-256 a bundle's digest line records: over every line before the last."""
    digest = hashlib.sha256()
    previous: bytes | None = None
    for line in lines:
        if previous is not None:
            digest.update(previous)
        previous = line
    return digest.hexdigest()


def write_bundle(path: Path, lines: Iterable[bytes]) -> None:
    """Write atomically and durably: a failed export never leaves a partial bundle under
    ``path``, and once this returns the file and its name are on disk (both fsynced)."""
    # Not mkstemp: its 0600 mode would outlive the rename; open() honours the umask.
    tmp = path.resolve().parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with open(tmp, "xb") as out:
            for line in lines:
                out.write(line)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.resolve().parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself
    finally:
        os.close(directory)


class ExportRefused(Exception):
    """The runs to export are missing or do not verify; the problems say why."""

    def __init__(self, problems: list[AuditProblem]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the runs to export")
        self.problems = problems


async def collect_runs(
    store: EventStore, workflows: WorkflowStore, run_ids: Sequence[UUID]
) -> list[RunExport]:
    """Read the runs to export with their workflow versions; verifies each run first.

    Raises ``ExportRefused`` when a run has no events or fails the audit: a
    bundle is evidence, so it is only made from histories that verify.
    """
    problems: list[AuditProblem] = []
    runs: list[RunExport] = []
    blob_store = BlobStore(store.pool, schema=store.schema)
    for run_id in dict.fromkeys(run_ids):
        try:
            events = await store.read_run(run_id)
        except RunArchived as exc:
            problems.append(AuditProblem(run_id, None, "chain", str(exc).split(": ", 1)[1]))
            continue
        if not events:
            problems.append(AuditProblem(run_id, None, "chain", "no events are stored for this run"))
            continue
        verifier = RunVerifier(run_id, problems)
        for event in events:
            verifier.feed(event)
        for event in events:
            data = bytes(event.data)
            if b"\n" in data or b"\r" in data:
                # Whitespace of the stored JSON text: it cannot travel in a line-delimited file.
                problems.append(
                    AuditProblem(run_id, event.seq, "bundle", "stored body contains a line break")
                )
        version = verifier.workflow_version or ""
        first = events[0]
        spec: WorkflowSpec | None = None
        registered_at: datetime | None = None
        if version:
            try:
                stored = await workflows.get(first.workflow_id, version, tenant=first.tenant)
                spec, registered_at = stored.spec, stored.created_at
            except UnknownWorkflow:
                pass
        run = BundleRun(run_id, first.tenant, first.workflow_id, version, spec, registered_at)
        blobs = await blob_store.fetch(list(verifier.blobs))
        for sha, (seq, size) in verifier.blobs.items():
            blob_bytes = blobs.get(sha)
            if blob_bytes is None or len(blob_bytes) != size or Blob.of(blob_bytes).sha256 != sha:
                problems.append(
                    AuditProblem(
                        run_id, seq, "blob", f"blob {sha} is missing or does not match its reference"
                    )
                )
            elif (
                b"\n" in blob_bytes or b"\r" in blob_bytes
            ):  # never written so (msgspec escapes them), but checked
                problems.append(AuditProblem(run_id, seq, "bundle", f"blob {sha} contains a line break"))
        runs.append(RunExport(run, events, blobs))
    if problems:
        problems.sort(key=sort_key)
        raise ExportRefused(problems)
    return runs


# -- verifying -------------------------------------------------------------------------------------


@dataclass
class _Section:
    run: BundleRun
    line: int
    verifier: RunVerifier
    events: list[RawEnvelope]


@dataclass
class BundleCheck:
    """The result of ``verify_bundle``: problems, what was checked, and (if kept) the runs."""

    problems: list[AuditProblem] = field(default_factory=list)
    digest: str = ""
    """SHA-256 of the bundle's content lines as computed here (not as claimed by the file)."""
    lines: int = 0
    events: int = 0
    runs: list[RunExport] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    """The blobs the bundle carries (each verified against its key), by SHA-256."""

    @property
    def clean(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        checked = f"{plural(self.events, 'event')} in {plural(len(self.runs), 'run')}"
        if self.clean:
            return f"ok: {checked} verified, digest sha256:{self.digest}"
        return (
            f"FAILED: {plural(len(self.problems), 'problem')} ({checked}, {plural(self.lines, 'line')} read)"
        )


def verify_bundle(lines: Iterable[bytes], *, expect_digest: str | None = None) -> BundleCheck:
    """Check a bundle given as its lines (as a binary file iterates them, newlines kept).

    Pure: no I/O besides consuming ``lines``. The runs are kept in the result
    (for ``import_bundle``); a caller that only verifies may drop them.
    """
    reading = _Reading(BundleCheck())
    number = 0
    for number, line in enumerate(lines, 1):
        reading.read_line(number, line)
    check = reading.check
    check.lines = number
    check.digest = reading.hasher.hexdigest()

    if number == 0:
        reading.report(None, "the bundle is empty")
        return check
    if reading.header is None and not any(p.line == 1 for p in check.problems):
        reading.report(1, "the first line is not the bundle header")
    reading.check_sections()
    reading.check_blobs()
    if reading.header is not None:
        reading.check_header_lists_sections(reading.header)
    reading.check_digest_line()
    if expect_digest is not None and expect_digest.removeprefix("sha256:").lower() != check.digest:
        reading.report(None, f"the bundle's digest is {check.digest}, not the expected {expect_digest}")
    check.problems.sort(key=sort_key)
    return check


def _spec_mismatch(run: BundleRun) -> str | None:
    """Why the workflow spec a run line carries is not the version it names (None: it is)."""
    if run.spec is None:
        return None
    if run.spec.id != run.workflow_id:
        return f"the spec is of workflow {run.spec.id!r}, not {run.workflow_id!r}"
    if spec_version(run.spec) != run.workflow_version:
        return (
            f"the spec's content hash is {spec_version(run.spec)}, "
            f"not the version {run.workflow_version} it is labelled with"
        )
    return None


@dataclass
class _Reading:
    """One pass of ``verify_bundle``: what the lines read so far established, and their problems.

    ``read_line`` checks each line as it comes (header, run lines, events, the digest line);
    the ``check_*`` methods then check what needs the whole bundle.
    """

    check: BundleCheck
    hasher: Any = field(default_factory=hashlib.sha256)
    header: BundleHeader | None = None
    digest: BundleDigest | None = None
    digest_line: int = 0
    sections: dict[UUID, _Section] = field(default_factory=dict)
    current: _Section | None = None
    event_ids: dict[UUID, tuple[UUID, int]] = field(default_factory=dict)
    blob_lines: dict[str, int] = field(default_factory=dict)

    def report(
        self,
        line: int | None,
        problem: str,
        kind: ProblemKind = "bundle",
        run_id: UUID | None = None,
        seq: int | None = None,
    ) -> None:
        self.check.problems.append(AuditProblem(run_id, seq, kind, problem, line))

    # -- line by line ------------------------------------------------------------------------------

    def read_line(self, number: int, line: bytes) -> None:
        """Check line ``number`` (1-based, its newline kept) and hash it unless it is the digest line."""
        body = line[:-1] if line.endswith(b"\n") else line
        if body is line:
            self.report(number, "the line does not end with a newline (the bundle was cut short or edited)")
        if self.digest_line:
            self.report(number, f"line after the digest line (line {self.digest_line})")
            return
        if body.startswith(_DIGEST_PREFIX):
            self.digest_line = number
            self._read_digest_line(number, body)
            return
        self.hasher.update(line)
        if number == 1 or body.startswith(_META_PREFIX):
            self._read_meta_line(number, body)
        else:
            self._read_event_line(number, body)

    def _read_digest_line(self, number: int, body: bytes) -> None:
        """Keep the digest line if it decodes and is in the canonical form this module writes."""
        try:
            decoded = _meta_decoder.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            self.report(number, f"the digest line is not valid: {exc}")
            return
        if not isinstance(decoded, BundleDigest):
            self.report(number, "the digest line is not valid")
        elif encode(decoded) != body:
            self.report(number, "the digest line is not in canonical form: it was edited")
        else:
            self.digest = decoded

    def _read_meta_line(self, number: int, body: bytes) -> None:
        """The header (line 1, and only there) or a run line, which opens the run's section."""
        try:
            meta = _meta_decoder.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            what = "a bundle header" if number == 1 else "a valid bundle line"
            self.report(number, f"not {what}: {exc}")
            return
        if number == 1:
            self._read_header(number, meta)
            if isinstance(meta, BundleHeader):
                return
        if isinstance(meta, BundleHeader):
            self.report(number, "a second bundle header")
            return
        if isinstance(meta, BundleDigest):  # shaped unlike the digest line this module writes
            self.digest_line = number
            self.report(number, "the digest line is not in canonical form: it was edited")
            return
        if isinstance(meta, BundleBlob):
            self._read_blob(number, meta)
            return
        self._open_section(number, meta)

    def _read_blob(self, number: int, blob: BundleBlob) -> None:
        """A blob line: its bytes must be those its key and size name; kept for the import."""
        data = bytes(blob.value)
        if blob.sha256 in self.blob_lines:
            self.report(
                number, f"blob {blob.sha256} again (first at line {self.blob_lines[blob.sha256]})", "blob"
            )
            return
        self.blob_lines[blob.sha256] = number
        actual = Blob.of(data)
        if actual.sha256 != blob.sha256 or len(data) != blob.size_bytes:
            self.report(
                number,
                f"blob {blob.sha256} does not match its contents: {len(data)} bytes hashing to "
                f"{actual.sha256}, the line says {blob.size_bytes} bytes (the blob was changed)",
                "blob",
            )
            return
        self.check.blobs[blob.sha256] = data

    def _read_header(self, number: int, meta: BundleHeader | BundleRun | BundleDigest) -> None:
        """Keep line 1 as the header if it is one, of the format version this module reads."""
        if not isinstance(meta, BundleHeader):
            self.report(number, "the first line is not the bundle header")
        elif meta.format_version not in READ_FORMAT_VERSIONS:
            self.report(
                number,
                f"bundle format version {meta.format_version} is not supported "
                f"(this Flowledger reads versions {', '.join(map(str, READ_FORMAT_VERSIONS))})",
            )
        else:
            self.header = meta

    def _open_section(self, number: int, run: BundleRun) -> None:
        """A run line: the events up to the next run line are this run's (unless it had a section)."""
        self.current = None
        if run.run_id in self.sections:
            self.report(
                number,
                f"second section of the run (first at line {self.sections[run.run_id].line})",
                run_id=run.run_id,
            )
            return
        self.current = self.sections[run.run_id] = _Section(
            run, number, RunVerifier(run.run_id, self.check.problems), []
        )
        mismatch = _spec_mismatch(run)
        if mismatch is not None:
            self.report(number, mismatch, run_id=run.run_id)

    def _read_event_line(self, number: int, body: bytes) -> None:
        """An event: of the current section's run and stream, its id unused elsewhere; fed to the
        run's verifier (chain, seq, schema, legality)."""
        current = self.current
        run_id = current.run.run_id if current is not None else None
        try:
            event = raw_envelope_decoder.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            self.report(number, f"not a valid event envelope: {exc}", run_id=run_id)
            return
        self.check.events += 1
        if current is None:
            self.report(number, "event outside any run section", run_id=event.run_id, seq=event.seq)
            return
        run = current.run
        if event.run_id != run.run_id:
            self.report(
                number,
                f"event of run {event.run_id} in the section of run {run.run_id}",
                "chain",
                run.run_id,
                event.seq,
            )
            return
        if (event.tenant, event.workflow_id) != (run.tenant, run.workflow_id):
            self.report(
                number,
                f"tenant/workflow {event.tenant!r}/{event.workflow_id!r} differ from the run line's "
                f"{run.tenant!r}/{run.workflow_id!r}",
                "stream",
                run.run_id,
                event.seq,
            )
        seen = self.event_ids.setdefault(event.event_id, (run.run_id, event.seq))
        if seen != (run.run_id, event.seq):
            self.report(
                number,
                f"event_id {event.event_id} is also used by run {seen[0]} seq {seen[1]}",
                "chain",
                run.run_id,
                event.seq,
            )
        current.verifier.feed(event, number)
        current.events.append(event)

    # -- the whole bundle --------------------------------------------------------------------------

    def check_sections(self) -> None:
        """Each run section has events and names the version its ``run_queued`` does; keeps the runs."""
        for section in self.sections.values():
            run, verifier = section.run, section.verifier
            if verifier.events == 0:
                self.report(section.line, "run line without any events", run_id=run.run_id)
            elif verifier.workflow_version is not None and verifier.workflow_version != run.workflow_version:
                self.report(
                    section.line,
                    f"the run line names workflow version {run.workflow_version!r} but the run's "
                    f"run_queued names {verifier.workflow_version!r}",
                    run_id=run.run_id,
                    seq=0,
                )
            self.check.runs.append(RunExport(run, section.events))

    def check_blobs(self) -> None:
        """Every blob a run references has a line (verified), and every blob line is referenced;
        each run keeps the blobs it references (for the import)."""
        referenced: set[str] = set()
        for section in self.sections.values():
            for sha, (seq, size) in section.verifier.blobs.items():
                referenced.add(sha)
                line = self.blob_lines.get(sha)
                if line is None:
                    self.report(
                        section.line,
                        f"the run references blob {sha}, which the bundle does not carry",
                        "blob",
                        section.run.run_id,
                        seq,
                    )
                elif sha in self.check.blobs and len(self.check.blobs[sha]) != size:
                    self.report(
                        line,
                        f"blob {sha} has {len(self.check.blobs[sha])} bytes, the run's event records {size}",
                        "blob",
                        section.run.run_id,
                        seq,
                    )
        for sha, line in self.blob_lines.items():
            if sha not in referenced:
                self.report(line, f"blob {sha} is referenced by no event of the bundle", "blob")
        for run in self.check.runs:
            verifier = self.sections[run.run.run_id].verifier
            run.blobs = {sha: self.check.blobs[sha] for sha in verifier.blobs if sha in self.check.blobs}

    def check_header_lists_sections(self, header: BundleHeader) -> None:
        """The header lists exactly the runs that have a section, in the order of the sections."""
        listed = header.runs
        sections = self.sections
        for run_id in listed:
            if run_id not in sections:
                self.report(1, "run listed in the header has no section in the bundle", run_id=run_id)
        for run_id, section in sections.items():
            if run_id not in listed:
                self.report(section.line, "run is not listed in the header", run_id=run_id)
        if [r for r in listed if r in sections] != [r for r in sections if r in listed]:
            self.report(1, "run sections are not in the order the header lists them")

    def check_digest_line(self) -> None:
        """There is a digest line, its SHA-256 is the bundle's, and it records each run's head."""
        digest = self.digest
        if digest is None:
            if not self.digest_line:
                self.report(None, "no digest line: the bundle is truncated or its last line was removed")
            return
        if digest.sha256 != self.check.digest:
            self.report(
                self.digest_line,
                "digest does not match the bundle's contents: a line was changed, removed, added or moved",
            )
        self._check_run_heads(digest)

    def _check_run_heads(self, digest: BundleDigest) -> None:
        """The digest line names exactly the runs with a section, each with its event count and head hash."""
        digest_line = self.digest_line
        for run_id, section in self.sections.items():
            recorded = digest.runs.get(str(run_id))
            verifier = section.verifier
            if recorded is None:
                self.report(digest_line, "run has no entry in the digest line", run_id=run_id)
                continue
            if recorded.events != verifier.events:
                self.report(
                    digest_line,
                    f"the digest line records {recorded.events} events, the bundle holds {verifier.events}",
                    "chain",
                    run_id,
                )
            if recorded.head_hash != (verifier.last_hash or ""):
                self.report(
                    digest_line,
                    "head hash differs from the digest line's: the run's last event was changed or removed",
                    "chain",
                    run_id,
                    verifier.last_seq,
                )
        for key in digest.runs:
            if not any(str(r) == key for r in self.sections):
                self.report(digest_line, f"the digest line names run {key}, which has no section")


def verify_bundle_file(path: Path, *, expect_digest: str | None = None) -> BundleCheck:
    """``verify_bundle`` over a file, streamed line by line."""
    with open(path, "rb") as lines:
        return verify_bundle(lines, expect_digest=expect_digest)


# -- importing -------------------------------------------------------------------------------------


class ImportRefused(Exception):
    """The bundle does not verify, or the target log holds other events for its runs."""

    def __init__(self, problems: list[AuditProblem]) -> None:
        super().__init__(f"{len(problems)} problem(s); nothing was imported")
        self.problems = problems


@dataclass
class ImportResult:
    new_runs: list[UUID] = field(default_factory=list)
    extended_runs: list[UUID] = field(default_factory=list)
    """Runs the target held a prefix of: their missing later events were appended."""
    present_runs: list[UUID] = field(default_factory=list)
    events_written: int = 0
    workflows_registered: int = 0
    workflows_new: int = 0
    restored_archive: int | None = None
    """The archive (``flowledger archive``) whose runs went back to their own positions."""
    partitions_restored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        restored = ""
        if self.restored_archive is not None:
            remade = f"; partitions made again: {', '.join(self.partitions_restored)}"
            restored = (
                f"; archive {self.restored_archive} restored: its events are back at their "
                f"original positions{remade if self.partitions_restored else ''}"
            )
        return (
            f"imported {plural(self.events_written, 'event')}: {plural(len(self.new_runs), 'new run')}, "
            f"{len(self.extended_runs):,} extended, {len(self.present_runs):,} already present; "
            f"{plural(self.workflows_registered, 'workflow version')} ({self.workflows_new} new){restored}"
        )


async def import_bundle(pool: asyncpg.Pool, check: BundleCheck, *, schema: str = DB_SCHEMA) -> ImportResult:
    """Load a verified bundle (``verify_bundle``'s result) into the log of ``schema``.

    All events are written in one transaction under the append lock of
    ``EventStore`` (``lock_txn``), so readers tailing ``global_position`` never
    skip them. Per run: absent -> inserted; holding exactly the bundle's events
    (event_id and hash per seq) -> nothing written; holding a prefix -> the rest
    appended; anything else -> ``ImportRefused`` and the transaction rolls back.
    The bundle's workflow versions are registered in the same transaction.

    A bundle that ``flowledger archive`` wrote here (its digest is an ``archives`` row's)
    is a restore: its runs' events go back to the global positions they had, in their
    partitions made again, behind every reader's checkpoint (the relay does not publish
    them again, the projections do not fold them again). Otherwise events take new positions.
    """
    if check.problems:
        raise ImportRefused(check.problems)
    result = ImportResult()
    runs = check.runs
    async with pool.acquire() as conn, conn.transaction():
        store = EventStore(pool, schema=schema)
        await store.lock_txn(conn)
        existing = await stored_chains(conn, [r.run.run_id for r in runs], schema=schema)
        archive_id = await archive_with_digest_conn(conn, check.digest, schema=schema)
        conflicts: list[AuditProblem] = []
        to_write: list[RawEnvelope] = []
        for run in runs:
            run_id = run.run.run_id
            have = existing.get(run_id, [])
            want = [(e.seq, e.event_id, e.hash) for e in run.events]
            if archive_id is not None:
                # An archive of this log: the log may hold any part of the run (its tail, when the
                # partition of its first events was detached); the rest goes back.
                missing, differ = _archive_gap(have, want)
                if differ is None and missing:
                    (result.extended_runs if have else result.new_runs).append(run_id)
                    to_write += [e for e in run.events if e.seq in missing]
                elif differ is None:
                    result.present_runs.append(run_id)
                else:
                    conflicts.append(
                        AuditProblem(
                            run_id,
                            differ,
                            "chain",
                            "the target log holds a different event for this run at this seq",
                        )
                    )
                continue
            differ = next((i for i, (a, b) in enumerate(zip(have, want, strict=False)) if a != b), None)
            if differ is not None:
                conflicts.append(
                    AuditProblem(
                        run_id,
                        want[differ][0],
                        "chain",
                        "the target log holds a different event for this run at this seq",
                    )
                )
            elif len(want) > len(have):
                (result.extended_runs if have else result.new_runs).append(run_id)
                to_write += run.events[len(have) :]
            else:
                result.present_runs.append(run_id)
        if to_write and not conflicts:
            clashes = await event_id_users(conn, [e.event_id for e in to_write], schema=schema)
            by_id = {e.event_id: e for e in to_write}
            for event_id, run_id, seq in clashes:
                event = by_id[event_id]
                conflicts.append(
                    AuditProblem(
                        event.run_id,
                        event.seq,
                        "chain",
                        f"event_id {event_id} is already used by run {run_id} seq {seq} in the target log",
                    )
                )
        if conflicts:
            conflicts.sort(key=sort_key)
            raise ImportRefused(conflicts)
        # The blobs first: a committed reference always has its blob (the same transaction).
        await insert_blobs_txn(conn, (Blob.of(d) for r in runs for d in r.blobs.values()), schema=schema)
        restore = (
            await _restore_plan_txn(conn, archive_id, to_write, schema) if archive_id and to_write else None
        )
        if restore is None and archive_id is not None and to_write and (result.extended_runs):
            raise ImportRefused(
                [
                    AuditProblem(
                        result.extended_runs[0],
                        None,
                        "chain",
                        "the log holds the end of this archived run but its first events cannot go back to "
                        "their positions (their partition's record is missing)",
                    )
                ]
            )
        if restore is None:
            await store.insert_recorded_txn(conn, to_write)  # also wakes the relay and projection runners
        else:
            result.restored_archive, partitions = restore
            for partition in partitions:
                await restore_partition_conn(conn, partition, schema=schema)
                result.partitions_restored.append(partition.name)
            await store.restore_recorded_txn(conn, to_write)
        result.events_written = len(to_write)
        await _register_versions_txn(conn, schema, runs, result)
    return result


def _archive_gap(
    have: list[tuple[int, UUID, str]], want: list[tuple[int, UUID, str]]
) -> tuple[set[int], int | None]:
    """The seqs of ``want`` (a run in an archive bundle) that the log lacks, and the first seq
    where the log holds something else (None: nothing else)."""
    held = {entry[0]: entry for entry in have}
    wanted = {entry[0] for entry in want}
    for entry in want:
        if entry[0] in held and held[entry[0]] != entry:
            return set(), entry[0]
    extra = sorted(seq for seq in held if seq not in wanted)
    if extra:
        return set(), extra[0]
    return wanted - held.keys(), None


async def _restore_plan_txn(
    conn: Conn, archive_id: int, events: Sequence[RawEnvelope], schema: str
) -> tuple[int, list[Partition]] | None:
    """When the archive's events can all go back to their own positions: the archive's id and
    the detached partitions to make again for them (None: they cannot)."""
    attached, drawn = await attached_partitions_conn(conn, schema=schema)
    detached = await detached_partitions_conn(conn, schema=schema)
    needed: dict[str, Partition] = {}
    for event in events:
        position = event.global_position
        if position > drawn:
            return None
        home = next((p for p in detached if p.lower <= position < p.upper), None)
        if home is not None:
            needed[home.name] = home
        elif not any(p.lower <= position < p.upper for p in attached):
            return None
    return archive_id, sorted(needed.values(), key=lambda p: p.lower)


async def _register_versions_txn(
    conn: Conn, schema: str, runs: list[RunExport], result: ImportResult
) -> None:
    """Register the bundle's workflow versions in the import's transaction, idempotently.

    Not ``WorkflowStore.register``: that stamps a version with the time of the
    call, and the latest version of a workflow is the one registered last, so an
    imported old version would become what new runs of the workflow execute. The
    source's registration time is kept instead (the time of import only when the
    bundle does not carry one).
    """
    versions = {
        (r.run.tenant, r.run.workflow_id, r.run.workflow_version): r.run
        for r in runs
        if r.run.spec is not None
    }
    for (tenant, workflow_id, version), run in versions.items():
        created = await register_version_txn(
            conn, tenant, workflow_id, version, run.spec, run.spec_registered_at, schema=schema
        )
        result.workflows_registered += 1
        result.workflows_new += int(created)
