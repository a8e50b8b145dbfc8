CREATE OR REPLACE FUNCTION webhook_delivery_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('webhook_delivery', '');
  RETURN NULL;
END;
$$;
DROP TABLE webhook_worker_awake;
