"""Browser pages: the integrator's sandbox (``GET /sandbox``), the operator console (``/console``) and the
API docs (``/docs``), server-rendered with a little JavaScript; every asset is served by the gateway.
"""
