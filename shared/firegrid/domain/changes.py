"""What a document change means: the predicates the Firestore triggers act on.

Triggers see every write of a document at least once; each predicate says whether
this write is the one a rule cares about, from the records before and after it.
"""

from __future__ import annotations

from firegrid.domain.cycle import Cycle, CycleStatus
from firegrid.domain.fanout import Group, GroupStatus
from firegrid.domain.model import Assignment, Worker


def entered_closing(before: Cycle | None, after: Cycle | None) -> bool:
    """The cycle stopped taking reports: time to aggregate it."""
    was_closing = before is not None and before.status is CycleStatus.CLOSING
    return after is not None and after.status is CycleStatus.CLOSING and not was_closing


def group_created(before: Group | None, after: Group | None) -> bool:
    """A fanned-out closing made this group: time to aggregate it."""
    return before is None and after is not None and after.status is GroupStatus.PENDING


def group_finished(before: Group | None, after: Group | None) -> bool:
    """A group's partial was just published: the closing may now combine them all."""
    was_done = before is not None and before.status is GroupStatus.DONE
    return after is not None and after.status is GroupStatus.DONE and not was_done


def newly_reported(before: Assignment | None, after: Assignment | None) -> bool:
    """A diff was just counted: the cycle may be full."""
    return after is not None and after.reported and not (before is not None and before.reported)


def joined_pool(before: Worker | None, after: Worker | None) -> bool:
    """The worker registered a token, or became (or confirmed it stays) available: an
    invitation round may now find enough workers."""
    if after is None:
        return False
    new_token = after.fcm_token is not None and (
        before is None or after.fcm_token != before.fcm_token
    )
    confirmed = after.available and (
        before is None or not before.available or after.available_until != before.available_until
    )
    return new_token or confirmed
