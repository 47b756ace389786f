-- Retention purge: when an usager's personal data (identity key, claims)
-- was removed after the retention period. NULL while it is kept. The row,
-- its random id and its mandates stay (the journal refers to them).
ALTER TABLE usagers ADD COLUMN purged_at BIGINT NULL;

-- One-time TOTP enrolment links (`/aidant/enrolment/{token}`): the token is
-- stored as its SHA-256 (hex), the pending secret encrypted like
-- `aidants.totp_secret`. It replaces the aidant's secret only once the
-- aidant confirmed it with their password and a first code.
CREATE TABLE aidant_enrolments (
    token_hash TEXT PRIMARY KEY,
    aidant_id TEXT NOT NULL REFERENCES aidants (id),
    totp_secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT NULL
);
CREATE INDEX aidant_enrolments_aidant ON aidant_enrolments (aidant_id);
