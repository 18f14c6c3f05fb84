-- Progress a running result reports through heartbeats (fraction done).
ALTER TABLE results ADD COLUMN progress REAL NOT NULL DEFAULT 0;
