DROP TABLE user_role;
DROP TABLE role;
