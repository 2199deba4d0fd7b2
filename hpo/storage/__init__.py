"""Where studies live and the contract with it: URLs, locks, masking, keys, read-back."""
