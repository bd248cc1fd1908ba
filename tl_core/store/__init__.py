"""The experiment store: tables, plain records, the store itself, the background epoch writer, run folders and schema migrations (SQLite or PostgreSQL).
"""
