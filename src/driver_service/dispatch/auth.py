"""Who may call driver.v1.DispatchService; merge into the server's rules:
`AuthPolicy(validator, rules={**DEFAULT_RULES, **DISPATCH_RULES})`.

| method            | service token needs | driver token                                  |
|-------------------|---------------------|-----------------------------------------------|
| FindNearbyDrivers | dispatch            | never                                         |
| DescribeDriver    | dispatch            | never                                         |
| SendCommand       | dispatch            | never                                         |
| GetCommandStatus  | dispatch            | never                                         |
| AnswerOffer       | drivers:write       | for its own driver_id (and the offer's driver)|

A driver answers only offers sent to it: the interceptor checks the request names the
token's driver, and the offer book checks that driver is the offer's recipient. A malformed
driver id is answered INVALID_ARGUMENT by the handler, whatever the token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from driver_service.interceptors.auth import MethodRule, named_driver_id
from driver_service.security.tokens import SCOPE_DISPATCH, SCOPE_WRITE

DISPATCH_SERVICE = "/driver.v1.DispatchService/"


def _answer_driver_id(request: Any) -> str | None:
    return named_driver_id(request.driver_id)


DISPATCH_RULES: Mapping[str, MethodRule] = {
    DISPATCH_SERVICE + "FindNearbyDrivers": MethodRule(SCOPE_DISPATCH),
    DISPATCH_SERVICE + "DescribeDriver": MethodRule(SCOPE_DISPATCH),
    DISPATCH_SERVICE + "SendCommand": MethodRule(SCOPE_DISPATCH),
    DISPATCH_SERVICE + "GetCommandStatus": MethodRule(SCOPE_DISPATCH),
    DISPATCH_SERVICE + "AnswerOffer": MethodRule(SCOPE_WRITE, _answer_driver_id),
}
