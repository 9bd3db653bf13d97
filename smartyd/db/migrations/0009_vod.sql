-- Online cinemas (MEGOGO, tvzavr) and the Irdeto CAS (issue 15): the imported
-- catalogs, the operator's genre map, and the durable partner outbox.

-- -- catalogs ---------------------------------------------------------------------------
-- Our genres (what the operator shows), and each partner's genres mapped onto them.
CREATE TABLE vod_genres (
    id    bigserial PRIMARY KEY,
    name  text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 128)
);

CREATE TABLE vod_genre_map (
    provider       text NOT NULL,
    partner_genre  text NOT NULL,
    genre_id       bigint REFERENCES vod_genres (id),   -- NULL: seen, not mapped yet
    PRIMARY KEY (provider, partner_genre)
);

-- One row per partner title.  ``digest``: a hash of the title's parsed
-- content (not of its XML bytes), so an unchanged title is not rewritten.
-- A title gone from the feed is hidden, never deleted (purchases point at it).
CREATE TABLE vod_titles (
    id              bigserial PRIMARY KEY,
    provider        text NOT NULL,
    external_id     text NOT NULL,
    name            text NOT NULL,
    name_en         text NOT NULL DEFAULT '',
    year            integer,
    country         text NOT NULL DEFAULT '',
    story           text NOT NULL DEFAULT '',
    duration_sec    integer,
    poster_url      text NOT NULL DEFAULT '',
    partner_genres  text[] NOT NULL DEFAULT '{}',
    info            jsonb NOT NULL DEFAULT '{}'::jsonb,  -- directors, actors, ratings, gallery...
    svod            boolean NOT NULL DEFAULT false,
    tvod            boolean NOT NULL DEFAULT false,
    price           numeric(14, 2) CHECK (price >= 0),   -- TVOD price, when sold individually
    tariff_id       bigint REFERENCES tariffs (id),      -- the catalog tariff that shows it
    digest          text NOT NULL,
    hidden          boolean NOT NULL DEFAULT false,
    created         timestamptz NOT NULL DEFAULT now(),
    updated         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, external_id)
);
CREATE INDEX vod_titles_visible_idx ON vod_titles (provider) WHERE NOT hidden;

-- TVOD: a title bought by an account, once per purchase id.
CREATE TABLE vod_purchases (
    id           bigserial PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts (id),
    title_id     bigint NOT NULL REFERENCES vod_titles (id),
    purchase_id  text NOT NULL,
    amount       numeric(14, 2) NOT NULL,
    ledger_id    bigint,
    created      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, title_id, purchase_id)
);

-- -- the partner outbox -----------------------------------------------------------------
-- A subscription row changing (assign, remove, suspend for debt, resume on
-- payment; from the engine, the admin CLI or any other writer) marks its
-- customer in the same transaction: the marker is the durable intake of the
-- outbox.  The planner turns markers into ``partner_calls`` by comparing what
-- each partner should have with ``partner_state`` (what we last asked for).
CREATE TABLE vod_dirty (
    customer_id  bigint PRIMARY KEY,
    since        timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION vod_mark_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO vod_dirty (customer_id) VALUES (OLD.customer_id) ON CONFLICT DO NOTHING;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO vod_dirty (customer_id) VALUES (NEW.customer_id) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER subscriptions_vod_dirty
    AFTER INSERT OR DELETE OR UPDATE OF state, tariff_id, account_id, customer_id ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION vod_mark_dirty();
-- A device moving or appearing changes what Irdeto must entitle.
CREATE FUNCTION vod_mark_device_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO vod_dirty (customer_id)
    SELECT a.customer_id FROM accounts a
     WHERE a.id IN (CASE WHEN TG_OP <> 'INSERT' THEN OLD.account_id END,
                    CASE WHEN TG_OP <> 'DELETE' THEN NEW.account_id END)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER devices_vod_dirty AFTER INSERT OR DELETE OR UPDATE OF account_id ON devices
    FOR EACH ROW EXECUTE FUNCTION vod_mark_device_dirty();

-- What we last asked each partner for: (provider, user, item) -> on/off.
-- MEGOGO: user = user_prefix + customer id, item 'user' (created) and
-- 'service:<id>'; tvzavr: item 'tariff:<id>'; Irdeto: user = device id,
-- item 'product:<id>'.
CREATE TABLE partner_state (
    provider  text NOT NULL,
    user_key  text NOT NULL,
    item      text NOT NULL,
    wanted    boolean NOT NULL,
    customer_id bigint NOT NULL,
    PRIMARY KEY (provider, user_key, item)
);

-- One partner call.  Sent in id order per (provider, user_key); a call in
-- ``sending`` whose lease ran out, or that timed out, is ``unknown``: its
-- effect is looked up at the partner before it is ever sent again.
CREATE TABLE partner_calls (
    id          bigserial PRIMARY KEY,
    provider    text NOT NULL,
    user_key    text NOT NULL,
    customer_id bigint NOT NULL,
    op          text NOT NULL,
    args        jsonb NOT NULL DEFAULT '{}'::jsonb,
    state       text NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'sending', 'unknown', 'done', 'failed')),
    attempts    integer NOT NULL DEFAULT 0,
    claim       integer NOT NULL DEFAULT 0,
    next_at     timestamptz NOT NULL DEFAULT '-infinity',
    last_error  text,
    created     timestamptz NOT NULL DEFAULT now(),
    finished    timestamptz
);
CREATE INDEX partner_calls_open_idx ON partner_calls (provider, user_key, id)
    WHERE state IN ('queued', 'sending', 'unknown', 'failed');
CREATE INDEX partner_calls_due_idx ON partner_calls (next_at)
    WHERE state IN ('queued', 'sending', 'unknown');
