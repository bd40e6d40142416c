"""Dataset converters: one module per dataset, each with a ``convert_<name>(source, dataset_id, ...)`` function and
an ``add_parser(subparsers)`` that registers ``nnunet-ext convert <name>``."""
