DROP INDEX webhook_delivery_event_idx;
ALTER TABLE webhook_delivery DROP COLUMN lease_token, DROP COLUMN locked_until;
