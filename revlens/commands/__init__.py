"""Sub-commands of the ``revlens`` console script (each module exposes ``register(subparsers)``)."""
