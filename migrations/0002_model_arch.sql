-- 0002_model_arch — models are no longer all EDSR: a row names its
-- architecture ("edsr", "carn", "carn_m", "onnx": kiln_model_arch) and keeps
-- kiln's one-line description of it (kiln_model_describe), in place of the
-- EDSR-only resblocks / features / res_scale columns.
--
-- res_scale is dropped, not kept as an override: an upload is validated, and
-- every job reopens the checkpoint, with kiln's default res_scale (the API
-- has never taken another one), so the stored value was always the default
-- and the description already shows it.
--
-- Rows written before this migration are EDSR; their description is rebuilt
-- from the old columns in kiln_model_describe's words ("%g" formats
-- res_scale the same way in SQLite and C).
--
-- The DEFAULTs exist only because ADD COLUMN ... NOT NULL needs one; kilnd
-- always writes both columns.

ALTER TABLE models ADD COLUMN arch TEXT NOT NULL DEFAULT 'edsr';
ALTER TABLE models ADD COLUMN description TEXT NOT NULL DEFAULT '';

UPDATE models SET description = printf('EDSR, %d blocks, %d features, x%d, res_scale %g',
                                       resblocks, features, scale, res_scale);

ALTER TABLE models DROP COLUMN resblocks;
ALTER TABLE models DROP COLUMN features;
ALTER TABLE models DROP COLUMN res_scale;

