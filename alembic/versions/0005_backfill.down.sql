-- Revision 0005 (frozen), downgrade.
DROP FUNCTION pub.backfill_page(text, bigint, integer, boolean, boolean);
DROP TABLE pub.backfill_runs;
