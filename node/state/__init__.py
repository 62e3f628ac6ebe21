"""The node's durable state: the only package that knows SQL."""
