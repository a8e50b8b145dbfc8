DROP TABLE branch;
