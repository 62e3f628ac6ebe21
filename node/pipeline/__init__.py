"""The node's stages in flow order."""
