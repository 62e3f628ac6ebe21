"""The node's life cycle: threads, signals, recovery, the stages run in turn."""

from node.service.node import Node

__all__ = ["Node"]
