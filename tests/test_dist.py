"""xopt.dist: the one reader of torchrun's RANK / WORLD_SIZE / LOCAL_RANK."""

import pytest

from xopt.dist import Launch, launch
from xopt.errors import XoptError


def test_plain_run_is_rank0_of_one():
    assert launch({}) == Launch(0, 1, 0)
    assert launch({}).is_main and not launch({}).distributed


def test_torchrun_env():
    run = launch({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (run.rank, run.world_size, run.local_rank) == (3, 4, 1)
    assert not run.is_main and run.distributed


@pytest.mark.parametrize("env, word", [({"RANK": "x"}, "RANK"), ({"WORLD_SIZE": "two"}, "WORLD_SIZE"),
                                       ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK 2"),
                                       ({"WORLD_SIZE": "0"}, "WORLD_SIZE"),
                                       ({"LOCAL_RANK": "-1"}, "LOCAL_RANK")])
def test_bad_env_is_one_line_error(env, word):
    with pytest.raises(XoptError, match=word):
        launch(env)


def test_process_env_is_what_eval_and_cli_read(monkeypatch):
    from xopt import dist
    from xopt.evaluate import shard

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert shard() == (1, 2) and not dist.is_main()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert shard() == (0, 1) and dist.is_main()
