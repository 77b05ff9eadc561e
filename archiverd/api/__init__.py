"""The HTTP layer: routes, the Site, the OpenAPI document."""
