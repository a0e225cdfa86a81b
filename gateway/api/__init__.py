"""The gateway's HTTP door: Azure-shaped REST (ARM paths), the token endpoint, OpenAPI.

``app.create_app(context)`` builds the FastAPI app; ``context.ApiContext`` is what the
routes serve; ``errors`` has Azure's texts and ARM's error shape; ``auth.require`` is the
one dependency each route declares (action + scope).
"""
