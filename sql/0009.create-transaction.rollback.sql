DROP TABLE transaction;
