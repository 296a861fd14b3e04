"""Secret rotation in the subscriber model: which secrets sign when, and what is shown."""

from __future__ import annotations

from service.domain.signing import decode_secret, generate_secret, sign_headers, verify
from service.domain.subscribers import MAX_PREVIOUS_SECRETS, Subscriber

NOW = 1_800_000_000_000


def test_rotation_keeps_the_old_secret_for_the_overlap_only() -> None:
    """During the overlap both secrets sign (new first); after it, or with no overlap, only the
    new one; neither is in the public view or the repr."""
    old = Subscriber(id="ledger", url="http://127.0.0.1:9/h")
    new_secret = generate_secret()
    rotated = old.rotated(new_secret, 60, NOW)
    assert rotated.signing_secrets(NOW) == [new_secret, old.secret]
    assert rotated.signing_secrets(NOW + 60_000) == [new_secret]
    assert old.rotated(new_secret, 0, NOW).signing_secrets(NOW) == [new_secret]
    shown = str(rotated.public()) + repr(rotated)
    assert old.secret not in shown and new_secret not in shown
    assert rotated.public()["previous_secret_expires_ms"] == NOW + 60_000


def test_overlapping_rotations_keep_a_bounded_number_of_secrets() -> None:
    """Rotating again during an overlap keeps the previous ones still valid, at most
    MAX_PREVIOUS_SECRETS of them; a rotation without overlap drops them all."""
    subscriber = Subscriber(id="ledger", url="http://127.0.0.1:9/h")
    for n in range(MAX_PREVIOUS_SECRETS + 2):
        subscriber = subscriber.rotated(generate_secret(), 3600, NOW + n)
    assert len(subscriber.signing_secrets(NOW)) == MAX_PREVIOUS_SECRETS + 1
    assert subscriber.rotated(generate_secret(), 0, NOW).previous_secrets == []


def test_several_secrets_give_one_signature_each_and_either_verifies() -> None:
    """sign_headers with two secrets writes two v1 signatures; a verifier with either accepts."""
    first, second = generate_secret(), generate_secret()
    headers = sign_headers([first, second], "msg_1", b"{}", timestamp=NOW // 1000)
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (first, second):
        assert verify([decode_secret(secret)], headers, b"{}", now=NOW / 1000) == "msg_1"
