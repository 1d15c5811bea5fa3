"""The HTTP server: the FastAPI app (routes, error mapping) and how it is run under uvicorn."""
