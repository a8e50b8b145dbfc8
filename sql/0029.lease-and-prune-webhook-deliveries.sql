-- depends: 0024.create-webhook 0027.scope-staff-email-to-organization
-- The delivery worker claims a batch of deliveries in a short transaction and sends them with no
-- transaction open: the claim is a lease, not a row lock. locked_until is when a worker that
-- stopped answering (killed, partitioned) loses it, so that another sends the delivery again with
-- the same webhook-id; lease_token tells the worker that claimed a delivery from one that claimed
-- it again after the lease ran out, so that a late answer never overwrites a newer attempt.
-- Both are null while no worker holds the delivery. Adding nullable columns without a default
-- rewrites nothing.
ALTER TABLE webhook_delivery ADD COLUMN locked_until TIMESTAMPTZ, ADD COLUMN lease_token UUID;

-- The worker deletes old deliveries and then the events none refers to: each deleted event's
-- foreign key check, and the "does any delivery still refer to it" question, look deliveries up
-- by event. Without this index each would read the whole delivery log. Building it holds off
-- writes to webhook_delivery for the time it takes (seconds per million rows).
CREATE INDEX webhook_delivery_event_idx ON webhook_delivery (event_id);
