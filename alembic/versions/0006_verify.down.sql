-- Revision 0006 (frozen), downgrade.
DROP FUNCTION pub.source_projection(text, bigint, bigint);
DROP FUNCTION pub.source_page_bound(text, bigint, integer);
DROP FUNCTION pub.verify_range(text, bigint, bigint);
