"""Data preparation on the compute node: staged datasets loaded offline, instruction and
preference rows rendered and masked, packing, and the tokenize-once cache."""
