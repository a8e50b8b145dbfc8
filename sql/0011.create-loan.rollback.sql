DROP TABLE loan_payment;
DROP TABLE loan;
