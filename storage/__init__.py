"""Storage: the SQL index (schema, migrations, sessions) and the file layout of received and produced objects.

The database is the source of truth for what was received, what ran and what was sent.
"""
