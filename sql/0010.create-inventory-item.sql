-- depends: 0003.create-branch 0006.create-supplier
CREATE TABLE inventory_item (
  id             UUID           PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id         UUID           NOT NULL REFERENCES organization (id),
  branch_id      UUID           NOT NULL,
  supplier_id    UUID,
  name           VARCHAR(100)   NOT NULL,
  sku            VARCHAR(50)    NOT NULL,
  category       VARCHAR(50),
  quantity       INT            NOT NULL DEFAULT 0 CHECK (quantity >= 0),
  reorder_point  INT            NOT NULL DEFAULT 0 CHECK (reorder_point >= 0),
  price          NUMERIC(12, 2) NOT NULL CHECK (price >= 0),
  status         VARCHAR(20)    NOT NULL DEFAULT 'in_stock'
                                CHECK (status IN ('in_stock', 'low_stock', 'out_of_stock', 'discontinued')),
  is_custom      BOOLEAN        NOT NULL DEFAULT false,
  last_updated   TIMESTAMPTZ    NOT NULL DEFAULT now(),
  created_at     TIMESTAMPTZ    NOT NULL DEFAULT now(),
  updated_at     TIMESTAMPTZ    NOT NULL DEFAULT now(),
  deleted_at     TIMESTAMPTZ,
  CONSTRAINT inventory_item_org_id_id_key UNIQUE (org_id, id),
  CONSTRAINT inventory_item_branch_fkey FOREIGN KEY (org_id, branch_id) REFERENCES branch (org_id, id),
  CONSTRAINT inventory_item_supplier_fkey FOREIGN KEY (org_id, supplier_id) REFERENCES supplier (org_id, id)
);
-- A SKU names one item per organization (two clinics may use the same codes), among live items.
CREATE UNIQUE INDEX inventory_item_sku_live_key ON inventory_item (org_id, sku) WHERE deleted_at IS NULL;
CREATE INDEX inventory_item_org_list_idx ON inventory_item (org_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX inventory_item_branch_idx ON inventory_item (org_id, branch_id) WHERE deleted_at IS NULL;
