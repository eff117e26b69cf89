"""Persistence: SQLAlchemy models, repository functions, the job queue rows and the blob store. No torch."""
