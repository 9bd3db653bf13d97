-- Website widgets (issue 16): the operator's widgets, one-use text captchas,
-- sign-ups per address (the abuse limit), and the TV guide imported from XMLTV.

CREATE TABLE widgets (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('channels', 'signup', 'cabinet', 'epg', 'payment')),
    title       text NOT NULL DEFAULT '',
    tariff_ids  bigint[] NOT NULL DEFAULT '{}',
    created     timestamptz NOT NULL DEFAULT now()
);

-- A captcha is answered once: the check deletes its row.
CREATE TABLE widget_captchas (
    id       text PRIMARY KEY,
    answer   integer NOT NULL,
    expires  timestamptz NOT NULL
);
CREATE INDEX widget_captchas_expires ON widget_captchas (expires);

CREATE TABLE widget_signups (
    id           bigserial PRIMARY KEY,
    ip           inet NOT NULL,
    customer_id  bigint REFERENCES customers (id) ON DELETE SET NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX widget_signups_ip_at ON widget_signups (ip, at);

-- The XMLTV channel id a channel's programmes are imported under.
ALTER TABLE channels ADD COLUMN xmltv_id text UNIQUE;

CREATE TABLE epg_programmes (
    channel_id   bigint NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    start        timestamptz NOT NULL,
    stop         timestamptz NOT NULL,
    title        text NOT NULL,
    description  text NOT NULL DEFAULT '',
    PRIMARY KEY (channel_id, start)
);
CREATE INDEX epg_programmes_stop ON epg_programmes (stop);
