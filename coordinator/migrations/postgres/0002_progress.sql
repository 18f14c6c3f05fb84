-- Progress a running result reports through heartbeats (fraction done).
ALTER TABLE results ADD COLUMN progress DOUBLE PRECISION NOT NULL DEFAULT 0;
