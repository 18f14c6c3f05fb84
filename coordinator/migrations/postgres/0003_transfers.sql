-- Bytes each host reports moving: inputs from the coordinator and from
-- peers, and bytes it served to peers (peer-to-peer sharing).
ALTER TABLE hosts ADD COLUMN bytes_from_coordinator BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN bytes_from_peers BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN bytes_served BIGINT NOT NULL DEFAULT 0;
