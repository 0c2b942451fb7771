from __future__ import annotations

from ftharness.redact import ERROR_TEXT_LIMIT, describe_error, redact_url


def test_a_password_is_masked_and_the_user_kept():
    assert redact_url("ftp://user:hunter2@host/x") == "ftp://user:***@host/x"


def test_a_token_without_a_user_is_masked():
    assert redact_url("s3://AKIAKEY:secret@bucket/p") == "s3://AKIAKEY:***@bucket/p"
    assert redact_url("https://ghp_token@github.com/a") == "https://***@github.com/a"


def test_urls_inside_a_message_are_all_masked():
    text = "copy ftp://a:b@h1/x to sftp://c:d@h2/y failed"
    assert redact_url(text) == "copy ftp://a:***@h1/x to sftp://c:***@h2/y failed"


def test_plain_urls_and_paths_are_unchanged():
    for text in ("gs://bucket/run", "/tmp/a@b", "file:///x/y", "s3://b/key@2"):
        assert redact_url(text) == text


def test_describe_error_masks_and_cuts():
    error = ConnectionError("ftp://u:pw@h/ " + "x" * 1000)
    text = describe_error(error)
    assert text.startswith("ConnectionError: ftp://u:***@h/ ")
    assert "pw" not in text
    assert len(text) == len("ConnectionError: ") + ERROR_TEXT_LIMIT
