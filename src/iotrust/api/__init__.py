"""The HTTP edge: a FastAPI app over the services (``create_app``)."""
