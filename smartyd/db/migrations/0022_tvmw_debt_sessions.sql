-- A debtor stays logged in (issue 23; Smarty's Login answers error 0 with
-- status_reason DEBT, and operators' apps show a debt banner and let the
-- subscriber pay from the TV).  An account deactivated for DEBT (inactive,
-- status_reason 'DEBT', by the built-in billing or an external one) keeps
-- its device sessions: what it may watch is the entitlement snapshot's
-- business (nothing while inactive), and a payment that lifts the DEBT
-- makes the same sessions watch again.  Every other deactivation -- a block,
-- INACTIVE, WAIT, ..., also of an account already in DEBT -- ends them at
-- once, as do a password change, deletion and a move to another customer.
--
-- Replaces the function of 0015; the trigger now also fires on status_reason
-- alone (a DEBT account blocked: active stays false).
CREATE OR REPLACE FUNCTION tvmw_end_account_sessions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.password_hash IS DISTINCT FROM OLD.password_hash
       OR (NOT NEW.active AND NEW.status_reason IS DISTINCT FROM 'DEBT'
           AND (OLD.active OR OLD.status_reason IS NOT DISTINCT FROM 'DEBT'))
       OR (NEW.deleted_at IS NOT NULL AND OLD.deleted_at IS NULL)
       OR NEW.customer_id IS DISTINCT FROM OLD.customer_id THEN
        DELETE FROM tvmw_sessions WHERE account_id = NEW.id;
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER accounts_tvmw_sessions ON accounts;
CREATE TRIGGER accounts_tvmw_sessions
    AFTER UPDATE OF password_hash, active, status_reason, deleted_at, customer_id ON accounts
    FOR EACH ROW EXECUTE FUNCTION tvmw_end_account_sessions();
