-- depends: 0004.create-staff
-- Roles are defined once for the whole system; what a role may do is the list of scopes it grants,
-- so the access token carries scopes and every operation checks one.
CREATE TABLE role (
  id           UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
  name         VARCHAR(50) NOT NULL UNIQUE,
  description  TEXT,
  scopes       TEXT[]      NOT NULL DEFAULT '{}'
);

CREATE TABLE user_role (
  user_id  UUID NOT NULL,
  role_id  UUID NOT NULL REFERENCES role (id),
  org_id   UUID NOT NULL REFERENCES organization (id),
  PRIMARY KEY (user_id, role_id, org_id),
  -- A grant can only name a staff member of the same organization.
  CONSTRAINT user_role_user_fkey FOREIGN KEY (org_id, user_id) REFERENCES staff (org_id, id)
);

INSERT INTO role (name, description, scopes) VALUES
  ('admin', 'Runs the organization: every resource, staff, roles, branches and the audit trail',
   ARRAY['patients:read', 'patients:write', 'appointments:read', 'appointments:write',
         'prescriptions:read', 'prescriptions:write', 'transactions:read', 'transactions:write',
         'branches:read', 'branches:write', 'staff:read', 'staff:write',
         'suppliers:read', 'suppliers:write', 'inventory:read', 'inventory:write',
         'loans:read', 'loans:write', 'community:read', 'community:write',
         'reports:read', 'reports:write', 'audit:read', 'roles:read', 'roles:write']),
  ('doctor', 'Treats patients: records, appointments and prescriptions; no finances',
   ARRAY['patients:read', 'patients:write', 'appointments:read', 'appointments:write',
         'prescriptions:read', 'prescriptions:write', 'branches:read', 'staff:read',
         'inventory:read', 'community:read', 'community:write']),
  ('nurse', 'Cares for patients and stock: records, appointments, inventory; reads prescriptions',
   ARRAY['patients:read', 'patients:write', 'appointments:read', 'appointments:write',
         'prescriptions:read', 'branches:read', 'staff:read', 'suppliers:read',
         'inventory:read', 'inventory:write', 'community:read', 'community:write']),
  ('receptionist', 'Front desk: patient contact data and bookings; no clinical or financial data',
   ARRAY['patients:read', 'patients:write', 'appointments:read', 'appointments:write',
         'branches:read', 'staff:read', 'community:read', 'community:write']),
  ('accountant', 'Money: transactions, loans, suppliers and reports; no prescriptions',
   ARRAY['patients:read', 'transactions:read', 'transactions:write', 'loans:read', 'loans:write',
         'reports:read', 'reports:write', 'suppliers:read', 'suppliers:write', 'inventory:read',
         'branches:read', 'staff:read', 'community:read', 'community:write']);
