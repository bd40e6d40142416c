"""Building blocks of the nnunet-ext architectures, one concept per file."""
