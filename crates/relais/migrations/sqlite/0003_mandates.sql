-- Aidants (helpers acting for a citizen under a mandate): organisations,
-- aidants, usagers, mandates, per-domain authorisations, and the
-- tamper-evident journal. Times are Unix seconds.
CREATE TABLE organisations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    siret TEXT NOT NULL UNIQUE,
    active INTEGER NOT NULL DEFAULT 1,
    -- JSON array of procedure domains; empty array: the default list.
    domains TEXT NOT NULL DEFAULT '[]',
    created_at INTEGER NOT NULL
);

CREATE TABLE aidants (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    -- argon2id PHC string.
    password_hash TEXT NOT NULL,
    -- base32 TOTP secret, stored as is for now (to be encrypted at rest).
    totp_secret TEXT NOT NULL,
    -- Last accepted TOTP time step: a code is never accepted twice.
    totp_last_step INTEGER NOT NULL DEFAULT 0,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER NOT NULL DEFAULT 0,
    current_org TEXT NULL REFERENCES organisations (id),
    created_at INTEGER NOT NULL
);

CREATE TABLE aidant_orgs (
    aidant_id TEXT NOT NULL REFERENCES aidants (id),
    org_id TEXT NOT NULL REFERENCES organisations (id),
    role TEXT NOT NULL CHECK (role IN ('aidant', 'referent')),
    PRIMARY KEY (aidant_id, org_id)
);
CREATE INDEX aidant_orgs_org ON aidant_orgs (org_id);

CREATE TABLE usagers (
    id TEXT PRIMARY KEY,
    identity_key TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE mandates (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organisations (id),
    usager_id TEXT NOT NULL REFERENCES usagers (id),
    created_by TEXT NOT NULL REFERENCES aidants (id),
    consent_version TEXT NOT NULL,
    consent_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX mandates_org ON mandates (org_id);
CREATE INDEX mandates_usager ON mandates (usager_id);

-- One row per procedure domain of a mandate. At most one active row per
-- (usager, organisation, domain): enforced in code, which revokes the
-- previous one in the same transaction.
CREATE TABLE authorisations (
    id TEXT PRIMARY KEY,
    mandate_id TEXT NOT NULL REFERENCES mandates (id),
    domain TEXT NOT NULL,
    starts_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER NULL,
    revoked_by TEXT NULL
);
CREATE INDEX authorisations_mandate ON authorisations (mandate_id);

-- Hash chain: hash = SHA-256 over (seq, at, kind, actor, org_id, data_hash,
-- prev_hash); data holds JSON where personal fields are replaced by salted
-- hashes.
CREATE TABLE journal (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    org_id TEXT NULL,
    data_hash TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);

CREATE TRIGGER journal_no_update BEFORE UPDATE ON journal
BEGIN
    SELECT RAISE(ABORT, 'journal is append-only');
END;

CREATE TRIGGER journal_no_delete BEFORE DELETE ON journal
BEGIN
    SELECT RAISE(ABORT, 'journal is append-only');
END;

-- Signed chain heads: a compact JWS over {seq, hash} by a Relais key.
CREATE TABLE journal_heads (
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    signature TEXT NOT NULL,
    kid TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX journal_heads_seq ON journal_heads (seq);

CREATE TRIGGER journal_heads_no_update BEFORE UPDATE ON journal_heads
BEGIN
    SELECT RAISE(ABORT, 'journal is append-only');
END;

CREATE TRIGGER journal_heads_no_delete BEFORE DELETE ON journal_heads
BEGIN
    SELECT RAISE(ABORT, 'journal is append-only');
END;
