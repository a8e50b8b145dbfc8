-- depends: 0029.lease-and-prune-webhook-deliveries
-- A transaction that notifies takes one lock per database at commit and holds it through the
-- flush of its WAL, so that notifications stay in commit order: every create that wrote a delivery
-- committed behind every other, and each notification woke the worker's listener besides. While a
-- delivery worker has just found deliveries it claims again within 50 ms and needs no wake-up:
-- its claim moves awake_until that far ahead (and back to now when it finds nothing), and a
-- delivery written before then notifies no one. A delivery whose commit comes after a worker's
-- empty claim but whose trigger ran before it is only claimed at the next poll: the wake-up is
-- lost, never the delivery. UNLOGGED: after a crash the row is gone, and every delivery notifies
-- until a worker claims again.
CREATE UNLOGGED TABLE webhook_worker_awake (
  id           BOOLEAN      PRIMARY KEY DEFAULT true CHECK (id),
  awake_until  TIMESTAMPTZ  NOT NULL
);

CREATE OR REPLACE FUNCTION webhook_delivery_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM webhook_worker_awake WHERE awake_until > clock_timestamp()) THEN
    PERFORM pg_notify('webhook_delivery', '');
  END IF;
  RETURN NULL;
END;
$$;
