-- Periodic jobs: when each last ran, cluster-wide.  A poller takes the job's
-- advisory lock, then runs only if its interval has passed since
-- last_started, so N instances together respect a partner's rate limit.
CREATE TABLE job_runs (
    job            text PRIMARY KEY,
    last_started   timestamptz,
    last_finished  timestamptz,
    last_ok        boolean,
    last_error     text,
    runs           bigint NOT NULL DEFAULT 0,
    failures       bigint NOT NULL DEFAULT 0
);
