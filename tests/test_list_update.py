"""Status lists and fee tables from the centre, the download (issue 10, item 5): laned/lane/list_update.py.

A signed manifest, then its chunks in any order; the verified bytes come out only when the
signature, the versions, the validity, the sizes and the SHA-256 all hold. Every refusal
leaves the version in use as it was and nothing collected. Keys are generated here; the
"centre" below signs exactly as laned/centre/lists.py does.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from laned.lane import list_update as lu
from laned.lane.fee_table import FeeTable
from laned.lane.status_list import StatusList, parse_text_steps, text_pieces
from laned.uplink.commands import CentreKeys, signature_of
from laned.uplink.messages import Compression, ListChunk, ListFormat, ListKind, ListManifest, ListRequest

LANE = "G0001-0201-03"
KEY_ID = "centre-2024"
KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()
KEYS = CentreKeys({KEY_ID: KEY.public_key()})
CST = dt.timezone(dt.timedelta(hours=8))
NOW = dt.datetime(2024, 11, 22, 10, 0, 0, tzinfo=CST)
LIMITS = lu.DownloadLimits(max_bytes=1 << 20, chunk_timeout_s=30, max_requests=3)


def status_payload(version: int, base: int | None = None, add: range = range(0), remove: range = range(0)) -> bytes:
    doc: dict[str, Any] = {"version": version, "add": [{"obu": f"{i:08x}", "reason": 3} for i in add]}
    if base is not None:
        doc["base"] = base
        doc["remove"] = [{"obu": f"{i:08x}"} for i in remove]
    return json.dumps(doc).encode()


FEE_TOML = b'version = 8\nvalid_from = 2024-11-22T00:00:00+08:00\n[stations."3701-0102"]\n1 = 3500\n12 = 9000\n'


class Centre:
    """Publishes a version as the centre does: a signed manifest and its chunks."""

    def __init__(self, kind: ListKind, version: int, data: bytes, *, base: int | None = None, chunks: int = 5,
                 key: Ed25519PrivateKey = KEY, key_id: str = KEY_ID, compression: Compression = Compression.NONE,
                 valid_from: dt.datetime = NOW - dt.timedelta(hours=1),
                 expires_at: dt.datetime = NOW + dt.timedelta(days=7), **members: Any) -> None:
        self.data = gzip.compress(data) if compression is Compression.GZIP else data
        size = len(self.data)
        self.chunk_size = max(1, -(-size // chunks))
        fmt = ListFormat.FEE_TOML if kind is ListKind.FEE_TABLE else ListFormat.STATUS_JSON
        manifest = ListManifest(kind=kind, version=version, base_version=base, format=fmt, compression=compression,
                                size=size, sha256=hashlib.sha256(self.data).digest(), chunk_size=self.chunk_size,
                                chunk_count=max(1, -(-size // self.chunk_size)), issued_at=valid_from,
                                valid_from=valid_from, expires_at=expires_at, key_id=key_id)
        self.body = manifest.to_dict()
        self.body.pop("signature", None)
        self.body.update(members)
        self.body["signature"] = base64.b64encode(signature_of(self.body, key)).decode()
        self.kind, self.version = kind, version

    @property
    def manifest(self) -> bytes:
        return json.dumps(self.body).encode()

    def chunk(self, index: int, *, data: bytes | None = None, version: int | None = None) -> bytes:
        piece = self.data[index * self.chunk_size:(index + 1) * self.chunk_size] if data is None else data
        return json.dumps({"kind": str(self.kind), "version": self.version if version is None else version,
                           "index": index, "data": base64.b64encode(piece).decode(),
                           "sha256": hashlib.sha256(piece).hexdigest()}).encode()

    def chunks(self, order: list[int] | None = None) -> list[bytes]:
        count = int(self.body["chunk_count"])
        return [self.chunk(i) for i in (order if order is not None else range(count))]


def download(kind: ListKind = ListKind.STATUS_LIST, in_use: int | None = 41) -> lu.ListDownload:
    return lu.ListDownload(kind=kind, lane_id=LANE, keys=KEYS, limits=LIMITS, in_use=in_use)


def feed(dl: lu.ListDownload, raw_chunks: list[bytes], now: dt.datetime = NOW) -> list[lu.ChunkOutcome]:
    out = []
    for raw in raw_chunks:
        chunk = lu.parse_chunk(raw)
        assert isinstance(chunk, ListChunk), chunk
        out.append(dl.on_chunk(chunk, now))
    return out


def started(dl: lu.ListDownload, centre: Centre, now: dt.datetime = NOW) -> lu.Started:
    outcome = dl.on_manifest(centre.manifest, now)
    assert isinstance(outcome, lu.Started), outcome
    return outcome


def store_at(version: int, add: range) -> StatusList:
    store = StatusList()
    store.load_full(version, [])
    if add:
        store.apply(next_delta(status_payload(version, add=add)))
    return store


def next_delta(payload: bytes) -> Any:
    steps = parse_text_steps(text_pieces([payload]))
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def applied(store: StatusList, content: lu.VerifiedContent) -> StatusList:
    """What list_apply does, synchronously: parse the pieces, apply to a fork."""
    new = store.fork()
    new.apply(next_delta_from(content))
    return new


def next_delta_from(content: lu.VerifiedContent) -> Any:
    steps = parse_text_steps(text_pieces(content.pieces, gzip=content.manifest.compression is Compression.GZIP))
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


# -- the normal path ---------------------------------------------------------------------------------


def test_a_full_list_in_five_chunks_arriving_out_of_order_is_verified_and_applies():
    centre = Centre(ListKind.STATUS_LIST, 42, status_payload(42, add=range(1000)))
    dl = download()
    start = started(dl, centre)
    assert start.request == ListRequest(lane_id=LANE, kind=ListKind.STATUS_LIST, version=42, at=NOW,
                                        reason="manifest of version 42")
    outcomes = feed(dl, centre.chunks([3, 0, 4, 1, 2]))
    assert [type(o) for o in outcomes] == [lu.Accepted] * 4 + [lu.Complete]
    assert [o.missing for o in outcomes[:4]] == [4, 3, 2, 1]
    done = outcomes[-1]
    assert isinstance(done, lu.Complete) and done.content.to_bytes() == centre.data
    assert dl.in_use == 41 and dl.collecting is None  # nothing in use changes before the caller applies
    store = applied(store_at(41, range(5)), done.content)
    assert store.version == 42 and len(store) == 1000 and store.is_listed_obu((999).to_bytes(4, "big")) == 3
    dl.installed(42)
    assert dl.in_use == 42


def test_a_delta_on_the_version_in_use_applies():
    old = store_at(41, range(100))
    centre = Centre(ListKind.STATUS_LIST, 42, status_payload(42, 41, add=range(100, 150), remove=range(0, 10)),
                    base=41, chunks=3)
    dl = download(in_use=41)
    started(dl, centre)
    done = feed(dl, centre.chunks([2, 1, 0]))[-1]
    assert isinstance(done, lu.Complete)
    new = applied(old, done.content)
    assert (new.version, len(new)) == (42, 140) and new.is_listed_obu(bytes(4)) is None
    assert (old.version, len(old)) == (41, 100)  # built beside the one in use


def test_a_gzip_list_is_verified_over_the_bytes_as_transferred():
    centre = Centre(ListKind.STATUS_LIST, 42, status_payload(42, add=range(3000)), compression=Compression.GZIP)
    dl = download()
    started(dl, centre)
    done = feed(dl, centre.chunks())[-1]
    assert isinstance(done, lu.Complete)
    assert len(applied(StatusList(), done.content)) == 3000


def test_a_fee_table_is_collected_and_parses_and_one_announced_ahead_of_its_date_is_taken():
    centre = Centre(ListKind.FEE_TABLE, 8, FEE_TOML, chunks=2, valid_from=NOW + dt.timedelta(days=30),
                    expires_at=NOW + dt.timedelta(days=400))
    dl = download(ListKind.FEE_TABLE, in_use=7)
    started(dl, centre)  # not "not yet valid": a fee table waits for its date as the pending one
    done = feed(dl, centre.chunks([1, 0]))[-1]
    assert isinstance(done, lu.Complete)
    table = FeeTable.from_toml_bytes(done.content.to_bytes(), tz=CST)
    assert table.version == 8 and table.fee("3701-0102", 12) == 9000


def test_the_retained_manifest_of_the_version_in_use_again_is_no_news_and_no_alarm():
    dl = download(in_use=42)
    outcome = dl.on_manifest(Centre(ListKind.STATUS_LIST, 42, status_payload(42)).manifest, NOW)
    assert isinstance(outcome, lu.Ignored) and outcome.code is lu.Ignore.IN_USE and dl.collecting is None


# -- refusals: each leaves the version in use and collects nothing ----------------------------------


def refused(dl: lu.ListDownload, raw: bytes, reason: lu.ListRefusal, now: dt.datetime = NOW) -> lu.Refused:
    before = dl.in_use
    outcome = dl.on_manifest(raw, now)
    assert isinstance(outcome, lu.Refused), outcome
    assert outcome.reason is reason, outcome
    assert dl.in_use == before and dl.collecting is None and dl.missing() == ()
    return outcome


def resigned(body: dict[str, Any], key: Ed25519PrivateKey = KEY) -> bytes:
    body = {k: v for k, v in body.items() if k != "signature"}
    body["signature"] = base64.b64encode(signature_of(body, key)).decode()
    return json.dumps(body).encode()


FULL_42 = Centre(ListKind.STATUS_LIST, 42, status_payload(42, add=range(10)))


def test_a_manifest_without_a_signature_is_refused():
    body = {k: v for k, v in FULL_42.body.items() if k != "signature"}
    refused(download(), json.dumps(body).encode(), lu.ListRefusal.MISSING_SIGNATURE)


def test_a_manifest_whose_version_rfc_8785_cannot_write_exactly_is_refused_malformed():
    """A version past 2**53 - 1 is signed by a JCS library as another text than the lane
    verifies: refused as malformed, naming the member, before any key is tried."""
    body = {k: v for k, v in FULL_42.body.items() if k != "signature"}
    body["version"] = 2**53 + 1
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    body["signature"] = base64.b64encode(KEY.sign(text)).decode()
    out = refused(download(), json.dumps(body).encode(), lu.ListRefusal.MALFORMED)
    assert "$.version" in out.text and "beyond the integers a signature can cover" in out.text


def test_a_manifest_changed_after_signing_is_refused_bad_signature():
    body = dict(FULL_42.body, size=FULL_42.body["size"] + 1)
    out = refused(download(), json.dumps(body).encode(), lu.ListRefusal.BAD_SIGNATURE)
    assert out.kind is ListKind.STATUS_LIST and out.version == 42 and "does not verify" in out.text


def test_a_manifest_signed_by_another_key_under_the_trusted_id_is_refused_bad_signature():
    refused(download(), resigned(FULL_42.body, OTHER_KEY), lu.ListRefusal.BAD_SIGNATURE)


def test_a_manifest_signed_with_an_untrusted_key_id_is_refused_unknown_key():
    centre = Centre(ListKind.STATUS_LIST, 42, status_payload(42), key=OTHER_KEY, key_id="rogue-1")
    out = refused(download(), centre.manifest, lu.ListRefusal.UNKNOWN_KEY)
    assert "rogue-1" in out.text and KEY_ID in out.text


def test_a_manifest_naming_another_lane_is_refused_and_one_naming_this_lane_is_taken():
    other = Centre(ListKind.STATUS_LIST, 42, status_payload(42), lane_id="G0001-0201-04")
    refused(download(), other.manifest, lu.ListRefusal.WRONG_LANE)
    ours = Centre(ListKind.STATUS_LIST, 42, status_payload(42), lane_id=LANE)
    started(download(), ours)


def test_a_manifest_of_a_kind_the_lane_does_not_know_is_refused():
    refused(download(), resigned(dict(FULL_42.body, kind="firmware")), lu.ListRefusal.UNKNOWN_KIND)


def test_a_manifest_that_breaks_the_contract_is_refused_malformed_naming_the_member():
    out = refused(download(), resigned(dict(FULL_42.body, sha256="00")), lu.ListRefusal.MALFORMED)
    assert "$.sha256" in out.text
    refused(download(), b"[1, 2]", lu.ListRefusal.MALFORMED)
    refused(download(), b"\xff{", lu.ListRefusal.MALFORMED)


def test_an_older_version_than_the_one_in_use_is_refused_as_a_rollback():
    out = refused(download(in_use=43), FULL_42.manifest, lu.ListRefusal.ROLLBACK)
    assert "older than version 43" in out.text


def test_a_delta_on_another_version_than_the_one_in_use_is_refused_never_a_mix_of_versions():
    delta = Centre(ListKind.STATUS_LIST, 42, status_payload(42, 40), base=40)
    refused(download(in_use=41), delta.manifest, lu.ListRefusal.BASE_MISMATCH)
    refused(download(in_use=None), delta.manifest, lu.ListRefusal.BASE_MISMATCH)


def test_an_expired_manifest_is_refused():
    centre = Centre(ListKind.STATUS_LIST, 42, status_payload(42), valid_from=NOW - dt.timedelta(days=8),
                    expires_at=NOW - dt.timedelta(seconds=1))
    refused(download(), centre.manifest, lu.ListRefusal.EXPIRED)
    fee = Centre(ListKind.FEE_TABLE, 8, FEE_TOML, valid_from=NOW - dt.timedelta(days=8), expires_at=NOW)
    refused(download(ListKind.FEE_TABLE, 7), fee.manifest, lu.ListRefusal.EXPIRED)


def test_a_status_list_not_yet_valid_beyond_the_clock_tolerance_is_refused():
    soon = Centre(ListKind.STATUS_LIST, 42, status_payload(42), valid_from=NOW + dt.timedelta(seconds=60))
    started(download(), soon)  # within DEFAULT_CLOCK_SKEW_S
    later = Centre(ListKind.STATUS_LIST, 42, status_payload(42), valid_from=NOW + dt.timedelta(hours=2))
    refused(download(), later.manifest, lu.ListRefusal.NOT_YET_VALID)


def test_a_manifest_announcing_more_than_the_configured_maximum_is_refused():
    big = Centre(ListKind.STATUS_LIST, 42, status_payload(42, add=range(40_000)))
    assert int(big.body["size"]) > LIMITS.max_bytes
    refused(download(), big.manifest, lu.ListRefusal.TOO_LARGE)


def test_a_second_different_manifest_for_the_version_being_collected_is_refused_and_the_first_goes_on():
    dl = download()
    started(dl, FULL_42)
    feed(dl, FULL_42.chunks([0]))
    other = Centre(ListKind.STATUS_LIST, 42, status_payload(42, add=range(11)))
    outcome = dl.on_manifest(other.manifest, NOW)
    assert isinstance(outcome, lu.Refused) and outcome.reason is lu.ListRefusal.CONFLICTING_MANIFEST
    again = dl.on_manifest(FULL_42.manifest, NOW)
    assert isinstance(again, lu.Ignored) and again.code is lu.Ignore.DUPLICATE
    assert dl.missing() == (1, 2, 3, 4)  # the chunks collected are kept


def test_all_chunks_in_but_a_wrong_sha256_is_refused_and_everything_collected_dropped():
    honest = Centre(ListKind.STATUS_LIST, 42, status_payload(42, add=range(100)))
    lying = Centre(ListKind.STATUS_LIST, 42, status_payload(42, add=range(100)))
    lying.body = dict(honest.body, sha256=hashlib.sha256(b"something else").hexdigest())
    lying.body = json.loads(resigned(lying.body))
    dl = download()
    started(dl, lying)
    last = feed(dl, honest.chunks())[-1]
    assert isinstance(last, lu.Refused) and last.reason is lu.ListRefusal.HASH_MISMATCH
    assert dl.in_use == 41 and dl.collecting is None


# -- chunks ----------------------------------------------------------------------------------------------


def test_stray_duplicate_damaged_and_misshapen_chunks_are_dropped_and_counted():
    dl = download()
    started(dl, FULL_42)
    good = FULL_42.chunk(0)
    assert isinstance(feed(dl, [good])[0], lu.Accepted)
    outcomes = feed(dl, [good, FULL_42.chunk(1, version=40), FULL_42.chunk(9), FULL_42.chunk(1, data=b"short")])
    assert [getattr(o, "code", None) for o in outcomes] == [lu.Drop.DUPLICATE, lu.Drop.OTHER_VERSION,
                                                            lu.Drop.OUT_OF_RANGE, lu.Drop.BAD_LENGTH]
    damaged = json.loads(FULL_42.chunk(1))
    damaged["sha256"] = hashlib.sha256(b"x").hexdigest()
    assert feed(dl, [json.dumps(damaged).encode()])[0] == lu.ChunkDropped(
        code=lu.Drop.BAD_CHUNK_HASH, text="chunk 1 of version 42: its SHA-256 does not match; asked for again")
    assert dl.dropped == {lu.Drop.DUPLICATE: 1, lu.Drop.OTHER_VERSION: 1, lu.Drop.OUT_OF_RANGE: 1,
                          lu.Drop.BAD_LENGTH: 1, lu.Drop.BAD_CHUNK_HASH: 1}
    assert dl.missing() == (1, 2, 3, 4)
    for raw in (b"{}", b"nope", b'{"kind":"status_list","version":42,"index":1,"data":"***"}',
                b'{"kind":"status_list","version":42,"index":1,"data":"","extra":1}'):
        outcome = lu.parse_chunk(raw)
        assert isinstance(outcome, lu.ChunkDropped) and outcome.code is lu.Drop.MALFORMED


def test_missing_chunks_are_requested_after_the_timeout_and_the_download_given_up_after_max_requests():
    dl = download()
    started(dl, FULL_42)
    feed(dl, FULL_42.chunks([0, 2, 4]))
    assert dl.due(NOW + dt.timedelta(seconds=29)) is None
    t = NOW + dt.timedelta(seconds=30)
    request = dl.due(t)
    assert isinstance(request, ListRequest) and request.chunks == (1, 3) and request.version == 42
    assert dl.due(t + dt.timedelta(seconds=10)) is None  # the next one only a timeout later
    feed(dl, FULL_42.chunks([1]), now=t + dt.timedelta(seconds=20))  # progress resets the count
    for n in range(1, 4):
        request = dl.due(t + dt.timedelta(seconds=20 + 30 * n))
        assert isinstance(request, ListRequest) and request.chunks == (3,)
    gave_up = dl.due(t + dt.timedelta(seconds=20 + 30 * 4))
    assert isinstance(gave_up, lu.Refused) and gave_up.reason is lu.ListRefusal.INTERRUPTED
    assert dl.collecting is None and dl.in_use == 41


def test_a_newer_manifest_supersedes_an_unfinished_download_and_an_older_one_is_ignored():
    dl = download()
    started(dl, FULL_42)
    feed(dl, FULL_42.chunks([0, 1]))
    newer = Centre(ListKind.STATUS_LIST, 43, status_payload(43, add=range(20)), chunks=2)
    outcome = started(dl, newer)
    assert outcome.superseded == 42 and dl.missing() == (0, 1)
    stale = dl.on_manifest(FULL_42.manifest, NOW)
    assert isinstance(stale, lu.Ignored) and stale.code is lu.Ignore.OLDER_THAN_DOWNLOAD
    late = feed(dl, FULL_42.chunks([2]))[0]  # a chunk of the superseded version
    assert isinstance(late, lu.ChunkDropped) and late.code is lu.Drop.OTHER_VERSION
    done = feed(dl, newer.chunks())[-1]
    assert isinstance(done, lu.Complete) and done.content.manifest.version == 43


def test_both_downloads_take_their_own_manifests_and_chunks_by_kind():
    both = lu.ListDownloads(lane_id=LANE, keys=KEYS, status_list=LIMITS, fee_table=LIMITS, status_list_in_use=41,
                            fee_table_in_use=7)
    fee = Centre(ListKind.FEE_TABLE, 8, FEE_TOML, chunks=2)
    assert isinstance(both.on_manifest(fee.manifest, NOW), lu.Started)
    assert isinstance(both.on_manifest(FULL_42.manifest, NOW), lu.Started)
    assert both.fee_table.collecting is not None and both.fee_table.collecting.version == 8
    assert both.status_list.collecting is not None and both.status_list.collecting.version == 42
    outcomes = [both.on_chunk(raw, NOW) for raw in fee.chunks() + FULL_42.chunks()]
    assert [type(o) for o in outcomes] == [lu.Accepted, lu.Complete] + [lu.Accepted] * 4 + [lu.Complete]
    unsigned = {k: v for k, v in FULL_42.body.items() if k != "signature"} | {"kind": "firmware"}
    first = both.on_manifest(json.dumps(unsigned).encode(), NOW)  # no kind to route by: the signature comes first
    assert isinstance(first, lu.Refused) and first.reason is lu.ListRefusal.MISSING_SIGNATURE
    signed_unknown = both.on_manifest(resigned(dict(FULL_42.body, kind="firmware")), NOW)
    assert isinstance(signed_unknown, lu.Refused) and signed_unknown.reason is lu.ListRefusal.UNKNOWN_KIND
    assert both.due(NOW) == []


# -- freshness ----------------------------------------------------------------------------------------


def test_a_list_older_than_its_maximum_age_is_old_and_past_its_expiry_expired():
    day = dt.timedelta(days=1)
    fresh = lu.list_age_state(NOW - day, NOW + 6 * day, 48 * 3600, NOW)
    old = lu.list_age_state(NOW - 3 * day, NOW + 4 * day, 48 * 3600, NOW)
    expired = lu.list_age_state(NOW - 8 * day, NOW - dt.timedelta(seconds=1), 48 * 3600, NOW)
    unknown = lu.list_age_state(None, None, 48 * 3600, NOW)
    assert [f.state for f in (fresh, old, expired, unknown)] == [lu.ListAge.OK, lu.ListAge.OLD, lu.ListAge.EXPIRED,
                                                                 lu.ListAge.OLD]
    assert old.age_s == 3 * 86400 and "72.0 h old (max 48 h)" in old.text
    assert not fresh.closes_etc(lu.StalePolicy.CLOSE_ETC)
    assert old.closes_etc(lu.StalePolicy.CLOSE_ETC) and not old.closes_etc(lu.StalePolicy.ALARM)
    assert expired.closes_etc(lu.StalePolicy.CLOSE_ETC)
