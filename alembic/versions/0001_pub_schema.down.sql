-- Revision 0001 (frozen), downgrade. Schema pub is dropped after the last step.
DROP TABLE pub.settings;
