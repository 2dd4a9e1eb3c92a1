"""The HTTP surface: routes, the request and response shapes, API keys and scopes, and the
middlewares that guard and observe every request."""
