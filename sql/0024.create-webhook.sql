-- depends: 0016.create-audit-log 0014.create-role 0020.enforce-record-rules 0022.create-audit-seal 0023.add-sync-indexes
-- Event hooks: an organization's webhook subscriptions, the outbox of events they hear about, and
-- one delivery per (event, subscription). Events and deliveries are written by the same statement
-- or transaction as the change they describe, so a rolled-back change emits nothing and a
-- committed one always does; the delivery worker reads them from here (FOR UPDATE SKIP LOCKED).

CREATE TABLE webhook_subscription (
  id                          UUID          PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id                      UUID          NOT NULL REFERENCES organization (id),
  url                         TEXT          NOT NULL,
  events                      TEXT[]        NOT NULL,
  description                 TEXT,
  -- 'ids' by default: no patient data leaves unless the organization asks for it.
  include                     VARCHAR(10)   NOT NULL DEFAULT 'ids' CHECK (include IN ('ids', 'full')),
  -- 'disabled' is set by the worker when deliveries have failed for the whole retry window.
  status                      VARCHAR(20)   NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused', 'disabled')),
  -- Signing keys (Standard Webhooks "whsec_..."): kept in clear because the worker signs with them.
  -- After a rotation the previous key keeps signing alongside until previous_secret_expires_at.
  secret                      TEXT          NOT NULL,
  previous_secret             TEXT,
  previous_secret_expires_at  TIMESTAMPTZ,
  -- When the current run of failed deliveries began (null while deliveries succeed).
  failing_since               TIMESTAMPTZ,
  created_at                  TIMESTAMPTZ   NOT NULL DEFAULT now(),
  updated_at                  TIMESTAMPTZ   NOT NULL DEFAULT now(),
  deleted_at                  TIMESTAMPTZ,
  UNIQUE (org_id, id)
);
CREATE INDEX webhook_subscription_org_list_idx ON webhook_subscription (org_id, created_at DESC, id DESC)
  WHERE deleted_at IS NULL;
-- Every write asks "who in this organization listens?": the answer for an organization without
-- webhooks must be one empty index probe.
CREATE INDEX webhook_subscription_active_idx ON webhook_subscription (org_id)
  WHERE status = 'active' AND deleted_at IS NULL;

-- One row per committed event that had at least one listener. id orders events: per record,
-- deliveries go out in this order.
CREATE TABLE outbox_event (
  id           BIGSERIAL     PRIMARY KEY,
  org_id       UUID          NOT NULL REFERENCES organization (id),
  type         VARCHAR(60)   NOT NULL,
  resource     VARCHAR(50)   NOT NULL,
  resource_id  UUID          NOT NULL,
  -- The record as the API returned it after the change (before it, for a delete); sent only to
  -- subscriptions with include = 'full'.
  record       JSONB         NOT NULL,
  changed      TEXT[]        NOT NULL DEFAULT '{}',
  created_at   TIMESTAMPTZ   NOT NULL DEFAULT now()
);

CREATE TABLE webhook_delivery (
  id                UUID          PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id            UUID          NOT NULL,
  subscription_id   UUID          NOT NULL,
  event_id          BIGINT        NOT NULL REFERENCES outbox_event (id),
  event_type        VARCHAR(60)   NOT NULL,
  resource_id       UUID          NOT NULL,
  status            VARCHAR(20)   NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
  attempts          INT           NOT NULL DEFAULT 0,
  next_attempt_at   TIMESTAMPTZ   NOT NULL DEFAULT now(),
  first_attempt_at  TIMESTAMPTZ,
  last_attempt_at   TIMESTAMPTZ,
  last_status_code  INT,
  last_error        TEXT,
  -- The last attempt is made here (the retry window after the event, or after a manual retry).
  give_up_at        TIMESTAMPTZ   NOT NULL DEFAULT now() + interval '24 hours',
  delivered_at      TIMESTAMPTZ,
  created_at        TIMESTAMPTZ   NOT NULL DEFAULT now(),
  updated_at        TIMESTAMPTZ   NOT NULL DEFAULT now(),
  CONSTRAINT webhook_delivery_subscription_fkey FOREIGN KEY (org_id, subscription_id)
    REFERENCES webhook_subscription (org_id, id)
);
CREATE INDEX webhook_delivery_list_idx ON webhook_delivery (subscription_id, created_at DESC, id DESC);
-- The worker's queue: pending deliveries only, so finished ones cost the claim nothing.
CREATE INDEX webhook_delivery_pending_idx ON webhook_delivery (next_attempt_at) WHERE status = 'pending';
-- "Is an earlier event of this record still waiting?" (in order per record).
CREATE INDEX webhook_delivery_record_order_idx ON webhook_delivery (subscription_id, resource_id, event_id)
  WHERE status = 'pending';

-- Wake the delivery workers at commit (LISTEN webhook_delivery). PostgreSQL folds identical
-- notifications of one transaction into one; workers poll as well, so a lost wake-up only delays.
CREATE FUNCTION webhook_delivery_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('webhook_delivery', '');
  RETURN NULL;
END;
$$;
CREATE TRIGGER webhook_delivery_notify
  AFTER INSERT OR UPDATE OF next_attempt_at ON webhook_delivery
  FOR EACH ROW WHEN (NEW.status = 'pending') EXECUTE FUNCTION webhook_delivery_notify();

-- Webhooks send the organization's data elsewhere: admins only by default.
UPDATE role SET scopes = scopes || ARRAY['webhooks:read', 'webhooks:write'] WHERE name = 'admin';
