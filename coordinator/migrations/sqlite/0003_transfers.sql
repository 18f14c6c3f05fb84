-- Bytes each host reports moving: inputs from the coordinator and from
-- peers, and bytes it served to peers (peer-to-peer sharing).
ALTER TABLE hosts ADD COLUMN bytes_from_coordinator INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN bytes_from_peers INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN bytes_served INTEGER NOT NULL DEFAULT 0;
