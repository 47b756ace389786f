-- Relais core schema (PostgreSQL). Times are Unix seconds.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    federation TEXT NOT NULL,
    data TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);

CREATE TABLE interactions (
    id TEXT PRIMARY KEY,
    federation TEXT NOT NULL,
    data TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX interactions_expiry ON interactions (expires_at);

CREATE TABLE logouts (
    id TEXT PRIMARY KEY,
    federation TEXT NOT NULL,
    data TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX logouts_expiry ON logouts (expires_at);

CREATE TABLE codes (
    id TEXT PRIMARY KEY,
    federation TEXT NOT NULL,
    client_id TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    data TEXT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    expires_at BIGINT NOT NULL
);
CREATE INDEX codes_expiry ON codes (expires_at);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    federation TEXT NOT NULL,
    client_id TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    data TEXT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0,
    expires_at BIGINT NOT NULL
);
CREATE INDEX tokens_grant ON tokens (grant_id);
CREATE INDEX tokens_session ON tokens (session_id);
CREATE INDEX tokens_expiry ON tokens (expires_at);

CREATE TABLE used_jti (
    federation TEXT NOT NULL,
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (federation, client_id, jti)
);

CREATE TABLE consents (
    id TEXT PRIMARY KEY,
    federation TEXT NOT NULL,
    client_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE registry_people (
    identity_key TEXT PRIMARY KEY,
    lookup_key TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX registry_people_lookup ON registry_people (lookup_key);
