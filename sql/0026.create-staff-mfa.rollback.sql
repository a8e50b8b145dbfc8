DROP TABLE mfa_challenge;
DROP TABLE mfa_recovery_code;
DROP TABLE staff_mfa;
