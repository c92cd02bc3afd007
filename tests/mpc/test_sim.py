"""The SPU protocol in one process (threads over in-memory links): numerics against plaintext."""

from __future__ import annotations

import numpy as np
import pytest

from veil.mpc.client import generate, prefill_prompt
from veil.mpc.errors import BadShare, MpcConfigError
from veil.mpc.local import PlainSession, SimSession
from veil.mpc.model import BUCKET
from veil.mpc.runtime import MpcConfig, ShareCodec
from veil.mpc.source import ModelSource

from .conftest import assert_greedy_agrees

PROMPT = [(11 * i + 2) % 256 for i in range(BUCKET + 5)]  # two prefill chunks


@pytest.mark.parametrize("protocol", ["aby3", "semi2k"])
def test_mpc_logits_close_and_tokens_identical(tiny: ModelSource, protocol: str) -> None:
    settings = MpcConfig(protocol=protocol)
    plain = prefill_prompt(PlainSession(tiny.shape, tiny.weights), tiny.head, PROMPT)
    mpc = prefill_prompt(SimSession(tiny.shape, tiny.weights, settings), tiny.head, PROMPT)
    assert np.abs(plain - mpc).max() < 0.05 * np.abs(plain).max()
    got = list(generate(SimSession(tiny.shape, tiny.weights, settings), tiny.head, PROMPT, 5))
    assert_greedy_agrees(got, tiny, PROMPT)


def test_unknown_protocol_is_a_config_error() -> None:
    with pytest.raises(MpcConfigError):
        MpcConfig(protocol="spdz")


@pytest.mark.parametrize(
    "value",
    [
        np.zeros((2, 64), np.float32),  # wrong shape
        np.zeros((BUCKET, 64), np.int32),  # wrong dtype
        np.zeros((BUCKET, 64), np.float64),
    ],
)
def test_share_check_rejects_wrong_shape_and_dtype(value: np.ndarray) -> None:
    settings = MpcConfig()
    codec = ShareCodec(settings)
    import spu
    from spu import libspu

    share = spu.Io(3, settings.runtime_config()).make_shares(value, libspu.Visibility.VIS_SECRET)[0]
    with pytest.raises(BadShare):
        codec.check(share, (BUCKET, 64), 0)
    codec.check(codec.secret(np.zeros((BUCKET, 64), np.float32))[0], (BUCKET, 64), 0)


def test_public_value_is_not_accepted_as_a_share() -> None:
    codec = ShareCodec(MpcConfig())
    with pytest.raises(BadShare):
        codec.check(codec.public(np.zeros((1, 64), np.float32), 0), (1, 64), 0)
