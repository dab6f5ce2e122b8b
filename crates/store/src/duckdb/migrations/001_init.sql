-- Events: one wide table, ordered on insert by arrival; queries filter on project and ts.
CREATE TABLE events (
    project_id  VARCHAR   NOT NULL,
    uuid        VARCHAR   NOT NULL,
    type        VARCHAR   NOT NULL,
    event       VARCHAR   NOT NULL,
    user_id     VARCHAR,
    device_id   VARCHAR,
    session_id  VARCHAR,
    group_id    VARCHAR,
    -- user_id, else device_id, else session_id: who "a visitor" is in unique counts.
    visitor_id  VARCHAR   NOT NULL,
    ts          TIMESTAMP NOT NULL,
    received_at TIMESTAMP NOT NULL,
    page        VARCHAR,
    properties  JSON,
    -- identify and group calls: the traits sent with the call.
    traits      JSON,
    context     JSON,
    lsn         UBIGINT   NOT NULL
);

-- People, from identify calls: traits merge, the later call's value wins per trait.
CREATE TABLE persons (
    project_id VARCHAR   NOT NULL,
    user_id    VARCHAR   NOT NULL,
    traits     JSON      NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (project_id, user_id)
);

-- Accounts (groups), from group calls: same merge rule as persons.
CREATE TABLE groups (
    project_id VARCHAR   NOT NULL,
    group_id   VARCHAR   NOT NULL,
    traits     JSON      NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (project_id, group_id)
);

-- Which users belong to which account.
CREATE TABLE group_members (
    project_id VARCHAR   NOT NULL,
    group_id   VARCHAR   NOT NULL,
    user_id    VARCHAR   NOT NULL,
    first_seen TIMESTAMP NOT NULL,
    last_seen  TIMESTAMP NOT NULL,
    PRIMARY KEY (project_id, group_id, user_id)
);

-- The queue position committed with the rows above (one row per queue).
CREATE TABLE queue_offsets (
    queue VARCHAR PRIMARY KEY,
    lsn   UBIGINT NOT NULL
);
