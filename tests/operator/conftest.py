from operator_support import operator  # noqa: F401  (the module-scoped operator fixture)
