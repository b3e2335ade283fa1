"""Named SQL queries, one .sql file each."""
