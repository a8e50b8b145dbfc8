DROP TABLE supplier;
