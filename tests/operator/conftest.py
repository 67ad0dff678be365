from operator_support import operator, pods  # noqa: F401  (the operator, and pods watching it)
from policy_support import policy  # noqa: F401  (the injection policy, one for the session)
