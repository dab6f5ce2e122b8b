"""The real Python SDKs (posthog, segment-analytics-python) against a running Tally server.

Reads TALLY_URL, WRITE_KEY and READ_KEY from the environment (scripts/sdk-test.sh sets
them). Names and ids carry a random suffix, so reruns against one server do not collide.
"""

import json
import os
import secrets
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone

import pytest

TALLY_URL = os.environ.get("TALLY_URL", "").rstrip("/")
WRITE_KEY = os.environ.get("WRITE_KEY", "")
READ_KEY = os.environ.get("READ_KEY", "")
RUN = f"{int(time.time()):x}{secrets.token_hex(3)}"

pytestmark = pytest.mark.skipif(
    not (TALLY_URL and WRITE_KEY and READ_KEY),
    reason="set TALLY_URL, WRITE_KEY and READ_KEY (scripts/sdk-test.sh does)",
)


def query(body):
    req = urllib.request.Request(
        f"{TALLY_URL}/api/v1/query",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "x-api-key": READ_KEY},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return json.load(res)
    except urllib.error.HTTPError as e:
        raise AssertionError(f"query answered {e.code}: {e.read().decode(errors='replace')}") from None


def events_named(names):
    rows, limit = [], 1000
    for offset in range(0, 50 * limit, limit):
        page = query(
            {
                "kind": "events",
                "date_range": "all",
                "filters": [["is", "event:name", list(names)]],
                "pagination": {"limit": limit, "offset": offset},
            }
        )["results"]
        rows += page
        if len(page) < limit:
            break
    return rows


def wait_for(names, keep=lambda r: True, done=lambda rows: bool(rows), timeout=10.0, settle=0.3):
    """Polls the events query until `done` holds for the kept rows; returns them."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in events_named(names) if keep(r)]
        if done(rows):
            time.sleep(settle)
            return [r for r in events_named(names) if keep(r)]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {names}; stored: {json.dumps(rows, indent=1)}")
        time.sleep(0.15)


def one(rows, event):
    hits = [r for r in rows if r["event"] == event]
    assert len(hits) == 1, f"expected one {event} row, found {len(hits)}: {json.dumps(rows, indent=1)}"
    return hits[0]


def parse_ts(ts):
    assert ts.endswith("Z") and len(ts.split(".")[-1]) == 7, f"{ts} is not RFC 3339 UTC with microseconds"
    return datetime.fromisoformat(ts[:-1] + "+00:00")


def assert_row_shape(row, sent_at):
    for k in ("uuid", "type", "event", "timestamp", "received_at", "properties", "traits", "context"):
        assert k in row, f"row lacks {k}: {row}"
    uuid.UUID(row["uuid"])
    ts, received = parse_ts(row["timestamp"]), parse_ts(row["received_at"])
    assert abs((ts - sent_at).total_seconds()) < 15, f"{row['event']} at {row['timestamp']}, sent {sent_at}"
    lag = (received - ts).total_seconds()
    assert -2 <= lag <= 15, f"{row['event']}: timestamp {row['timestamp']} vs received_at {row['received_at']}"


def absent(v):
    return v is None or v == ""


def test_posthog_python():
    from posthog import Posthog

    user = f"py-ph-user-{RUN}"
    anon = f"py-ph-anon-{RUN}"
    alias_id = f"py-ph-alias-{RUN}"
    group_key = f"py-ph-acme-{RUN}"
    e_capture = f"py_ph_signed_up_{RUN}"
    capture_id = str(uuid.uuid4())
    errors = []

    client = Posthog(
        project_api_key=WRITE_KEY,
        host=TALLY_URL,
        on_error=lambda e, batch: errors.append(repr(e)),
        max_retries=1,
        capture_mode="v0",
    )
    sent_at = datetime.now(timezone.utc)
    client.capture(
        e_capture,
        distinct_id=user,
        properties={"plan": "pro", "amount": 9.99, "nested": {"tags": ["a", "b"]}},
        groups={"company": group_key},
        uuid=capture_id,
    )
    # posthog-python 7 has no identify(); set() sends a `$set` event, and posthog-js's
    # identify is a `$identify` capture carrying `$set` and `$anon_distinct_id`.
    client.set(distinct_id=user, properties={"email": f"{user}@example.com", "name": "Ada"})
    client.capture("$identify", distinct_id=user, properties={"$set": {"plan": "pro"}, "$anon_distinct_id": anon})
    client.group_identify("company", group_key, {"name": "Acme", "employees": 50}, distinct_id=user)
    client.alias(previous_id=user, distinct_id=alias_id)
    client.flush()
    client.shutdown()
    assert errors == []

    names = [e_capture, "$set", "$identify", "$groupidentify", "$create_alias"]
    rows = wait_for(
        names,
        keep=lambda r: r["user_id"] == user,
        done=lambda rs: all(any(r["event"] == n for r in rs) for n in names),
    )
    assert len(rows) == len(names), json.dumps(rows, indent=1)
    for r in rows:
        assert_row_shape(r, sent_at)

    capture = one(rows, e_capture)
    assert capture["type"] == "track"
    assert capture["uuid"] == capture_id
    assert capture["group_id"] == group_key
    assert capture["properties"]["plan"] == "pro"
    assert capture["properties"]["amount"] == 9.99
    assert capture["properties"]["nested"] == {"tags": ["a", "b"]}
    assert capture["properties"]["$lib"] == "posthog-python"

    person = one(rows, "$set")
    assert person["type"] == "identify"
    assert person["traits"] == {"email": f"{user}@example.com", "name": "Ada"}

    identify = one(rows, "$identify")
    assert identify["type"] == "identify"
    assert identify["traits"] == {"plan": "pro"}

    group = one(rows, "$groupidentify")
    assert group["type"] == "group"
    assert group["group_id"] == group_key
    assert group["traits"] == {"name": "Acme", "employees": 50, "group_type": "company"}

    alias = one(rows, "$create_alias")
    assert alias["type"] == "alias"


def test_segment_python():
    import segment.analytics as analytics

    user = f"py-seg-user-{RUN}"
    anon = f"py-seg-anon-{RUN}"
    group_id = f"py-seg-acme-{RUN}"
    e_track = f"py_seg_signed_up_{RUN}"
    e_dedup = f"py_seg_dedup_{RUN}"
    page_name = f"Pricing {RUN}"
    track_id = str(uuid.uuid4())
    dedup_id = f"py-{uuid.uuid4()}"  # not a UUID: the server derives a stable one
    errors = []

    analytics.write_key = WRITE_KEY
    analytics.host = TALLY_URL
    analytics.max_retries = 1
    analytics.on_error = lambda e, batch: errors.append(repr(e))

    sent_at = datetime.now(timezone.utc)
    analytics.track(
        user,
        e_track,
        {"plan": "pro", "revenue": 42.5, "nested": {"tags": ["a", "b"]}},
        context={"groupId": group_id},
        message_id=track_id,
    )
    analytics.track(anonymous_id=anon, event=e_track, properties={"campaign": "spring"})
    analytics.identify(user, {"email": f"{user}@example.com", "name": "Ada"}, anonymous_id=anon)
    analytics.page(user, category="Docs", name=page_name, properties={"path": "/pricing"})
    analytics.group(user, group_id, {"name": "Acme", "employees": 50})
    analytics.alias(anon, user)
    # The same messageId twice, in two requests: one stored event.
    analytics.track(user, e_dedup, {"round": 0}, message_id=dedup_id)
    analytics.flush()
    analytics.track(user, e_dedup, {"round": 1}, message_id=dedup_id)
    analytics.flush()
    analytics.shutdown()
    assert errors == []

    names = [e_track, "$identify", page_name, "$group", "$alias", e_dedup]
    rows = wait_for(
        names,
        keep=lambda r: r["user_id"] == user or r["device_id"] == anon,
        done=lambda rs: all(any(r["event"] == n for r in rs) for n in names)
        and sum(r["event"] == e_track for r in rs) == 2,
        settle=1.0,
    )
    assert len(rows) == 7, json.dumps(rows, indent=1)
    for r in rows:
        assert_row_shape(r, sent_at)

    tracks = [r for r in rows if r["event"] == e_track]
    known = [r for r in tracks if r["user_id"] == user]
    anonymous = [r for r in tracks if absent(r["user_id"])]
    assert len(known) == 1 and len(anonymous) == 1, json.dumps(tracks, indent=1)
    known, anonymous = known[0], anonymous[0]
    assert known["type"] == "track"
    assert known["uuid"] == track_id
    assert known["group_id"] == group_id
    assert known["properties"]["plan"] == "pro"
    assert known["properties"]["revenue"] == 42.5
    assert known["properties"]["nested"] == {"tags": ["a", "b"]}
    assert known["context"]["library"]["name"] == "analytics-python"
    assert anonymous["device_id"] == anon
    assert anonymous["properties"]["campaign"] == "spring"

    identify = one(rows, "$identify")
    assert identify["type"] == "identify"
    assert identify["user_id"] == user
    assert identify["device_id"] == anon
    assert identify["traits"] == {"email": f"{user}@example.com", "name": "Ada"}

    page = one(rows, page_name)
    assert page["type"] == "page"
    assert page["properties"]["path"] == "/pricing"

    group = one(rows, "$group")
    assert group["type"] == "group"
    assert group["group_id"] == group_id
    assert group["traits"] == {"name": "Acme", "employees": 50}

    alias = one(rows, "$alias")
    assert alias["type"] == "alias"
    assert alias["user_id"] == user

    dedup = one(rows, e_dedup)
    assert dedup["properties"]["round"] == 0
