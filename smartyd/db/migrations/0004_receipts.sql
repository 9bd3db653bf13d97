-- Fiscal receipts (Dreamkas): one durable job per payment.
--
-- State machine (smartyd/fiscal/jobs.py):
--   queued  --claim-->  posting  --POST answered with an operation-->  pending
--   posting --outcome unknown (time-out, 5xx, crash)--> posting, due again at
--             next_attempt_at: the next claim looks the operation up by
--             external_id before it would POST again
--   pending --SUCCESS (poll or webhook)--> done
--   pending --ERROR--> failed;  any --max attempts / refused / no contact--> failed
--
-- next_attempt_at is written from the worker's injected clock: '-infinity'
-- means "due now" for any clock.  For a job in 'posting' it is the end of the
-- claim's lease.  claim counts the claims, so that the writer holding an
-- older claim cannot overwrite a newer one.
CREATE TABLE receipt_jobs (
    id               bigserial PRIMARY KEY,
    payment_id       bigint NOT NULL UNIQUE REFERENCES payments (id),
    external_id      text NOT NULL UNIQUE,            -- Dreamkas externalId
    state            text NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'posting', 'pending', 'done', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,      -- failed tries so far
    polls            integer NOT NULL DEFAULT 0,      -- operation status polls
    claim            bigint NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT '-infinity',
    operation_id     text UNIQUE,
    operation_status text,
    receipt_id       text,
    receipt          jsonb,                           -- the body POSTed (kept identical on re-POST)
    last_error       text,
    created          timestamptz NOT NULL DEFAULT now(),
    updated          timestamptz NOT NULL DEFAULT now(),
    finished         timestamptz
);
CREATE INDEX receipt_jobs_due_idx ON receipt_jobs (next_attempt_at, id)
    WHERE state IN ('queued', 'posting', 'pending');
CREATE INDEX receipt_jobs_state_idx ON receipt_jobs (state, id);

-- Devices and positions fetched from the Dreamkas API, shared by every
-- instance; fetched_at is seconds on the fetching process's clock.
CREATE TABLE dreamkas_cache (
    kind        text PRIMARY KEY,
    data        jsonb NOT NULL,
    fetched_at  double precision NOT NULL
);
