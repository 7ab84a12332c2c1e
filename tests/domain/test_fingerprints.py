"""Error fingerprints: what groups together in the Issues view, and what fits the stored column."""

from __future__ import annotations

import re

from webapp.domain.fingerprints import fingerprint_of, normalise_error
from webapp.models import Operation


def test_errors_that_differ_only_in_ids_numbers_and_addresses_share_a_fingerprint():
    first = fingerprint_of(
        "SMTPRecipientsRefused",
        "550 5.1.1 <ann@example.com> unknown; ref 3f2a9c1e-0b7d-4c5e-9a8b-1234567890ab pi_3Nabc at 0xdeadbeef",
    )
    second = fingerprint_of(
        "SMTPRecipientsRefused",
        "551 5.1.2 <bob.smith+x@mail.example.org>   unknown; ref 00000000-1111-2222-3333-444444444444 pi_9Zzz at 0xABC",
    )

    assert first == second


def test_different_errors_or_classes_do_not_group():
    assert fingerprint_of("Timeout", "connect timed out") != fingerprint_of("Timeout", "read timed out")
    assert fingerprint_of("Timeout", "connect timed out") != fingerprint_of("OSError", "connect timed out")


def test_a_fingerprint_is_sixteen_hex_digits_and_fits_its_column():
    fingerprint = fingerprint_of("ValueError", "bad input 42")

    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint)
    assert len(fingerprint) == Operation.__table__.c.error_fingerprint.type.length


def test_an_error_without_class_or_message_still_has_a_fingerprint():
    assert fingerprint_of(None, None) == fingerprint_of("", "") != fingerprint_of("", "x")
    assert normalise_error(None) == ""


def test_long_messages_group_on_their_first_300_normalised_characters():
    assert fingerprint_of("E", "x" * 300 + "a") == fingerprint_of("E", "x" * 300 + "b")
    assert fingerprint_of("E", "x" * 299 + "a") != fingerprint_of("E", "x" * 299 + "b")
    assert len(normalise_error("word " * 100)) == 300


def test_normalising_replaces_the_variable_parts_with_placeholders():
    message = "  user ann@example.com  id cus_ABC123 uuid 3f2a9c1e-0b7d-4c5e-9a8b-1234567890ab 0x1F ab12cd34ef 12.5s\n"

    assert normalise_error(message) == "user <email> id <id> uuid <uuid> <hex> <hex> <n>s"
