"""Request size buckets: a padded binary HTTP request decodes to the same request, and its
length is a bucket that depends on the request's length only through the bucket."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from veil.wire import bhttp
from veil.wire.padding import MIN_BUCKET, STEP_BUCKET, pad_to_bucket, request_bucket

BUCKETS = {MIN_BUCKET * 2**i for i in range(5)}


@given(st.integers(min_value=0, max_value=4 * 1024 * 1024))
def test_a_bucket_holds_the_request_and_is_one_of_few(length: int) -> None:
    bucket = request_bucket(length)
    assert bucket >= length
    assert bucket in BUCKETS or bucket % STEP_BUCKET == 0
    assert bucket - length <= max(length, MIN_BUCKET)  # at most doubles a small one
    if length > STEP_BUCKET:
        assert bucket - length < STEP_BUCKET


def test_bucket_edges() -> None:
    assert [request_bucket(n) for n in (0, 1024, 1025, 16384, 16385, 40000)] == [
        1024,
        1024,
        2048,
        16384,
        32768,
        49152,
    ]


@given(st.binary(max_size=5000), st.sampled_from(["/v1/chat/completions", "/x"]))
def test_padded_requests_decode_to_the_request(content: bytes, path: str) -> None:
    request = bhttp.Request(
        "POST", "https", "node.veil.invalid", path, ((b"content-type", b"a/b"),), content
    )
    padded = pad_to_bucket(bhttp.encode_request(request))
    assert len(padded) == request_bucket(len(padded))
    assert bhttp.decode_request(padded) == request
