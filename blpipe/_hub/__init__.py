"""What runs in the calling process: the hub and its backends."""
