-- Nodes skipped because their run halted (a stop on failure, a cancel), a subset of
-- skipped_nodes: they do not count towards a run's progress. Rows written before this
-- migration keep '{}' until `flowledger projections rebuild run_summaries`.
ALTER TABLE flowledger.run_summaries ADD COLUMN halted_nodes text[] NOT NULL DEFAULT '{}';
