"""SQLite adapter: one writer connection (WAL), numbered schema migrations."""
