"""The models a trial trains and how they are scored: the MLP, its trainer, members."""
