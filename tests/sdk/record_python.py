"""Drives a real Python SDK against record.mjs's capture server (see record.mjs).

    python record_python.py <capture_url> posthog|segment

Uses the placeholder write key and the fixed ids that crates/server/tests/recorded_sdks.rs
asserts on. Exits non-zero if the SDK reported an error.
"""

import sys

REC_WRITE_KEY = "REC_WRITE_KEY_0000000000000000000000000000000"
USER = "rec_user_1"
ANON = "rec_anon_1"
ALIAS = "rec_alias_1"
GROUP = "rec_group_1"
EVENT = "recorded_event"
POSTHOG_PYTHON_CAPTURE_ID = "3f1e6a52-7c0d-4b8e-9a61-5d2c8e4f0a03"
SEGMENT_PYTHON_TRACK_ID = "3f1e6a52-7c0d-4b8e-9a61-5d2c8e4f0a04"


def posthog(url, errors):
    from posthog import Posthog

    # Defaults otherwise: capture v0 (POST /batch/), no gzip.
    client = Posthog(
        project_api_key=REC_WRITE_KEY,
        host=url,
        on_error=lambda e, batch: errors.append(repr(e)),
        max_retries=0,
    )
    client.capture(
        EVENT,
        distinct_id=USER,
        properties={"plan": "pro", "amount": 9.99, "nested": {"tags": ["a", "b"]}},
        groups={"company": GROUP},
        uuid=POSTHOG_PYTHON_CAPTURE_ID,
    )
    client.set(distinct_id=USER, properties={"email": f"{USER}@example.com", "name": "Ada"})
    client.group_identify("company", GROUP, {"name": "Acme", "employees": 50}, distinct_id=USER)
    client.alias(previous_id=USER, distinct_id=ALIAS)
    client.flush()
    client.shutdown()


def segment(url, errors):
    import segment.analytics as analytics

    analytics.write_key = REC_WRITE_KEY
    analytics.host = url
    analytics.max_retries = 0
    analytics.on_error = lambda e, batch: errors.append(repr(e))
    analytics.track(
        USER,
        EVENT,
        {"plan": "pro", "revenue": 42.5, "nested": {"tags": ["a", "b"]}},
        message_id=SEGMENT_PYTHON_TRACK_ID,
    )
    analytics.identify(USER, {"email": f"{USER}@example.com", "name": "Ada"}, anonymous_id=ANON)
    analytics.page(USER, category="Docs", name="Pricing", properties={"path": "/pricing"})
    analytics.group(USER, GROUP, {"name": "Acme", "employees": 50})
    analytics.alias(ANON, USER)
    analytics.flush()
    analytics.shutdown()


def main():
    url, which = sys.argv[1], sys.argv[2]
    errors = []
    {"posthog": posthog, "segment": segment}[which](url, errors)
    if errors:
        print(f"record_python: {which} errors: {errors}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
