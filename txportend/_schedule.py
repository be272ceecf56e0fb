"""
The polling schedule: when the next probe of a wait comes.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from ._hostport import seconds

#: What an ``interval`` may be: fixed seconds, a :class:`datetime.timedelta`,
#: or a policy ``(attempt) -> seconds`` (attempt counts from 0), like the one
#: :func:`twisted.application.internet.backoffPolicy` returns.
IntervalType = float | datetime.timedelta | Callable[[int], float]


def default_interval(attempt: int) -> float:
    """
    The default polling schedule: 5 ms between probes for the first 125 ms,
    then 4% of the time waited so far (4% longer after each probe), up to
    100 ms, which it reaches after about 2.5 s.

    So a change is seen within about 5 ms in the first fraction of a
    second, while a wait that lasts minutes costs no more than portend's 10
    probes a second. (Pausing less than 5 ms at first would see a change a
    few milliseconds sooner at twice the probes and wake-ups: see the
    performance page.)

    :param attempt: how many pauses came before this one (0 for the first).
    :return: seconds to pause before the next probe.

    >>> default_interval(0)
    0.005
    >>> round(default_interval(26), 4)
    0.0052
    >>> default_interval(10_000)
    0.1
    """
    return min(0.005 * 1.04 ** min(max(0, attempt - 25), 200), 0.1)


def interval_policy(interval: IntervalType) -> Callable[[int], float]:
    """
    Turn an ``interval`` argument into a policy ``(attempt) -> seconds``.

    A fixed interval follows txportend's one duration rule
    (:func:`txportend._hostport.seconds`): seconds (not a bool) or a
    :class:`datetime.timedelta`, finite and not negative; ``0`` probes
    again at once. A callable is the policy itself.

    :raises TypeError: for a string, ``None`` or another type.
    :raises ValueError: for a negative, infinite or NaN interval.
    """
    if callable(interval):
        return interval
    pause = seconds(interval, name="interval", unlimited=False, negative="refuse")
    return lambda attempt: pause
