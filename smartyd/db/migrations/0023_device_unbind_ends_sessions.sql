-- A device unbound by any path (smartyd-admin device unbind, the console, the
-- Billing API's account/device delete) ends its TV Middleware sessions at
-- once, on every instance (tvmw_sessions' delete trigger NOTIFYs them).
CREATE FUNCTION tvmw_end_device_sessions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM tvmw_sessions WHERE account_id = OLD.account_id AND device_uid = OLD.uid;
    RETURN NULL;
END $$;
CREATE TRIGGER devices_tvmw_sessions AFTER DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION tvmw_end_device_sessions();
