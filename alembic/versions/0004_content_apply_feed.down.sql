-- Revision 0004 (frozen), downgrade.
DROP FUNCTION pub.feed(bigint, integer, text[]);
DROP FUNCTION pub.apply_batch(integer);
DROP TABLE pub.rev_counter;
DROP TABLE pub.content;
