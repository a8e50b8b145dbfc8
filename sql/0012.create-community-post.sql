-- depends: 0004.create-staff
CREATE TABLE community_post (
  id          UUID          PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id      UUID          NOT NULL REFERENCES organization (id),
  staff_id    UUID          NOT NULL,
  title       VARCHAR(200)  NOT NULL,
  content     TEXT          NOT NULL,
  image       TEXT,
  tags        JSONB,
  likes       INT           NOT NULL DEFAULT 0 CHECK (likes >= 0),
  created_at  TIMESTAMPTZ   NOT NULL DEFAULT now(),
  updated_at  TIMESTAMPTZ   NOT NULL DEFAULT now(),
  deleted_at  TIMESTAMPTZ,
  CONSTRAINT community_post_org_id_id_key UNIQUE (org_id, id),
  CONSTRAINT community_post_staff_fkey FOREIGN KEY (org_id, staff_id) REFERENCES staff (org_id, id)
);
CREATE INDEX community_post_org_list_idx ON community_post (org_id, created_at DESC, id DESC)
  WHERE deleted_at IS NULL;
