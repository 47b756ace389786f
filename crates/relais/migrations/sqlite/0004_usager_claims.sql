-- Delegated sign-in: the usager's pivot identity claims (JSON object), so
-- that a service can receive the usager's identity when an aidant acts for
-- them. NULL until the usager has signed in themselves.
ALTER TABLE usagers ADD COLUMN claims TEXT NULL;
