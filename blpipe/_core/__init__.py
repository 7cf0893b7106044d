"""What runs in any process: the contract, chains, the worker."""
