DROP TABLE login_origin;
