DROP TABLE appointment;
