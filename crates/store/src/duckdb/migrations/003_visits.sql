-- Visits, kept by the writer in the same transaction as the events they are cut from
-- (see visits.rs): a person's events without a session id, cut by 30 minutes without
-- an event, and each session id the clients sent. Filled for events stored before by
-- the back-fill that runs after this migration (it logs its progress).
CREATE TABLE visits (
    project_id VARCHAR   NOT NULL,
    -- The client's session id; NULL for a visit cut by 30 minutes of silence.
    session_id VARCHAR,
    -- The person (user id, else the linked user, else the visitor id) of the visit's
    -- first event, as resolved when it was last derived.
    person_id  VARCHAR   NOT NULL,
    start_ts   TIMESTAMP NOT NULL,
    end_ts     TIMESTAMP NOT NULL,
    events     INTEGER   NOT NULL,
    pageviews  INTEGER   NOT NULL,
    entry_page VARCHAR,
    exit_page  VARCHAR,
    -- Per page (NULL: the events without one): the visit's events and page views there.
    pages      STRUCT(page VARCHAR, events INTEGER, pageviews INTEGER)[] NOT NULL
);

-- Set once the back-fill has run over every event stored before this version.
CREATE TABLE visits_backfill (done BOOLEAN NOT NULL);
