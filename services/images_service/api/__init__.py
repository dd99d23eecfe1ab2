"""HTTP surface of the images-service: routers per resource, dependencies, error handlers."""
