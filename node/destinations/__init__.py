"""Where SEGs go: one module per kind of destination."""
