DROP TABLE financial_report;
