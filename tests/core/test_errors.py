"""Errors cross process boundaries whole (issue 13: a shard actor's InvalidInput reaches the
coordinator through pickle; unpicklable, Ray replaced it and the answer became a 503, not the 422)."""

from __future__ import annotations

import pickle

import pytest

from core.errors import Conflict, InvalidInput, LimitExceeded, NotFound, StorageError


@pytest.mark.parametrize("err", [InvalidInput("filter.must.0.key", "not indexed"),
                                 LimitExceeded("k", "at most 10"), NotFound("collection 'x' not found"),
                                 Conflict("exists"), StorageError("damaged")])
def test_every_error_survives_pickle_with_its_type_message_and_fields_issue_13(err):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err)
    if isinstance(err, InvalidInput):
        assert (back.field, back.reason) == (err.field, err.reason)


def test_a_shard_unavailable_error_survives_pickle_naming_its_shard_issue_13():
    from service.ray_shards import ShardUnavailable

    back = pickle.loads(pickle.dumps(ShardUnavailable("c/shard-1", "ActorDiedError")))
    assert type(back) is ShardUnavailable and back.label == "c/shard-1" and "c/shard-1" in str(back)
