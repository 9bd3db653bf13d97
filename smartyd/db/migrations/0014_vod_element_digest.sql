-- The catalog sync's cheap unchanged check (issue 15): a hash of each title
-- element's canonical form (C14N, whitespace-only text between elements
-- dropped), stored next to ``digest`` (the hash of the converted title).  A
-- sync loads these once and does not convert an element whose hash is
-- unchanged; NULL (rows from before this column) falls back to ``digest``.
ALTER TABLE vod_titles ADD COLUMN element_digest text;
