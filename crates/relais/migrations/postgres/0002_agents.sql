-- Agent federation: accounts keyed by (provider, provider sub), linked across
-- providers by verified email.
CREATE TABLE agent_accounts (
    id TEXT PRIMARY KEY,
    federation TEXT NOT NULL,
    email TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (federation, email)
);

CREATE TABLE agent_links (
    federation TEXT NOT NULL,
    provider TEXT NOT NULL,
    provider_sub TEXT NOT NULL,
    account_id TEXT NOT NULL,
    PRIMARY KEY (federation, provider, provider_sub)
);
