-- Each user's, team's and host's total credit at the end of each day it
-- earned some (BOINC's daily stats): the credit-over-time charts. Written
-- by the leader's sweep; today's point is read live.
CREATE TABLE credit_days (
    board TEXT NOT NULL,
    id BIGINT NOT NULL,
    day BIGINT NOT NULL,
    total_credit DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (board, id, day)
);
