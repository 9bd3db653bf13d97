-- An account's state decides what Irdeto entitles (the products go to the
-- devices of the customer's *active* accounts, smartyd.vod.irdeto): an
-- account blocked or unblocked by any path (smartyd-admin, the console, the
-- Billing API, the charging engine's DEBT) or moved to another customer marks
-- its customers for the partner outbox in the same transaction, as a tariff
-- or device change does (migration 0009).  Before, only a subscription's
-- change did, so a block left the blocked account's devices entitled.
CREATE FUNCTION vod_mark_account_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.active IS DISTINCT FROM OLD.active OR NEW.customer_id IS DISTINCT FROM OLD.customer_id
    THEN
        INSERT INTO vod_dirty (customer_id) VALUES (OLD.customer_id) ON CONFLICT DO NOTHING;
        INSERT INTO vod_dirty (customer_id) VALUES (NEW.customer_id) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER accounts_vod_dirty AFTER UPDATE OF active, customer_id ON accounts
    FOR EACH ROW EXECUTE FUNCTION vod_mark_account_dirty();
