"""The REST service: storage (SQLite), the backend the routes call, FastAPI app, client and CLI."""
