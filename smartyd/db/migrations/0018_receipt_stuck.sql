-- Receipts stuck in one open state (issue 24): counted in the gauge
-- smartyd_receipts_stuck{state} and logged as a warning once per job and state
-- (smartyd/fiscal/jobs.py, stuck).
--
-- state_since: when the job entered its state, on the worker's injected clock.
-- Writers that change a job's state (the payment's transaction enqueueing it,
-- a claim, a webhook) set it NULL; every worker round stamps the open jobs it
-- finds NULL with its clock reading, so the time is at most one round late,
-- and kept in the table it survives restarts.  A claim handed back unsent
-- restores the value it had (a job claimed in vain round after round has not
-- moved).  For rows of before this migration the first round after it starts
-- the count.
--
-- stuck_warned: the open states for which the job's warning was logged; a
-- job is warned once per state, whichever instance sees it first.
ALTER TABLE receipt_jobs
    ADD COLUMN state_since  timestamptz,
    ADD COLUMN stuck_warned text[] NOT NULL DEFAULT '{}';
CREATE INDEX receipt_jobs_open_since_idx ON receipt_jobs (state_since)
    WHERE state IN ('queued', 'posting', 'pending');
