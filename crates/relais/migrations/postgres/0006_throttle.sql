-- Failure counters shared by every node (issue 9): the /token failed
-- client authentications per (client, client address) and per client, and
-- the aidant sign-in attempts per client address. One row per key and
-- fixed window; a reservation is one atomic upsert, so parallel requests
-- on any node cannot all pass the check before one of them is counted.
CREATE TABLE throttle (
    key TEXT PRIMARY KEY,
    window_start BIGINT NOT NULL,
    count BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX throttle_expires ON throttle (expires_at);
