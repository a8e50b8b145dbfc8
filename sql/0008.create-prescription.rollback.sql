DROP TABLE prescription;
