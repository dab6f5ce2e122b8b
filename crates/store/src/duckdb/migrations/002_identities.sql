-- The identity map: which user a device (anonymous) id belongs to. Filled by the writer
-- from every event that carries both a user id and a device id (identify after sign-up,
-- any call sent while signed in) and from alias calls (previous id -> user id).
-- The first link wins: a device id that later appears with another user id stays with
-- the first. Queries resolve person_id = user_id, else the linked user, else the
-- visitor id, at read time, so a link made today also joins yesterday's anonymous events.
CREATE TABLE identities (
    project_id VARCHAR   NOT NULL,
    device_id  VARCHAR   NOT NULL,
    user_id    VARCHAR   NOT NULL,
    linked_at  TIMESTAMP NOT NULL,
    PRIMARY KEY (project_id, device_id)
);

-- Back-fill from events already stored.
INSERT INTO identities
SELECT project_id, device_id, arg_min(user_id, ts), min(ts)
FROM events
WHERE user_id IS NOT NULL AND device_id IS NOT NULL AND device_id <> user_id
GROUP BY project_id, device_id;
