from operator_support import operator  # noqa: F401  (the module-scoped operator fixture)
from policy_support import policy  # noqa: F401  (the injection policy, one for the session)
