from operator_support import operator, pods  # noqa: F401  (the operator, and pods watching it)
