"""The names users choose (kinds, namespaces) and the retry backoff; no database."""

from __future__ import annotations

import random
import statistics

import pytest

import delta_actors as delta
from delta_actors.errors import ConfigError
from delta_actors.model.kinds import kind_of
from delta_actors.model.names import validate_name
from delta_actors.queue.retry import MAX_RETRY_DELAY, retry_delay

# Seeded, reproducible jitter; nothing here is cryptographic.
Rng = random.Random

# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["default", "a", "0", "user-profiles_2", "x" * 63])
def test_valid_names_pass(name):
    """Lowercase letters, digits, '-' and '_', starting with a letter or digit, up to 63."""
    assert validate_name(name, "namespace") == name


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("Users", "invalid namespace 'Users': use lowercase"),
        ("-lead", "invalid namespace '-lead'.*starting with a letter or digit"),
        ("_lead", "invalid namespace '_lead'"),
        ("x" * 64, "'x{64}': it is 64 characters long, at most 63"),
        ("a b", "invalid namespace 'a b'"),
        ("", "invalid namespace ''"),
        ("x'; drop table delta_job; --", r"invalid namespace \"x'; drop table delta_job; --\""),
        ("caf\u00e9", "invalid namespace 'caf\u00e9'"),
        ("line\nbreak", r"invalid namespace 'line\\nbreak'"),
        (5, "namespace must be a string, got int: 5"),
        (None, "namespace must be a string, got NoneType: None"),
    ],
)
def test_invalid_names_name_the_value_and_the_rule(name, needle):
    """The ConfigError shows the offending value and the rule it broke."""
    with pytest.raises(ConfigError, match=needle):
        validate_name(name, "namespace")


def test_a_very_long_name_is_shown_shortened():
    """A name far over the limit is cut to 80 characters in the message, with its length."""
    name = "y" * 500
    with pytest.raises(ConfigError) as caught:
        validate_name(name, "kind")
    message = str(caught.value)
    assert "500 characters long" in message
    assert "y" * 77 + "..." in message
    assert "y" * 81 not in message


@pytest.mark.parametrize("kind", ["Not Valid", "UPPER", "x" * 64, "a;b", ""])
def test_job_class_with_an_invalid_kind_fails_at_class_creation(kind):
    """`class X(delta.Job, kind=...)` validates the kind when the class is created."""
    with pytest.raises(delta.ConfigError, match=r"invalid kind of Bad"):

        class Bad(delta.Job, kind=kind):
            pass


def test_job_class_with_a_non_string_kind_fails_at_class_creation():
    """A kind that is not a string is refused with its type."""
    with pytest.raises(delta.ConfigError, match="kind of Bad must be a string, got int: 3"):

        class Bad(delta.Job, kind=3):  # type: ignore[arg-type]
            pass


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan")])
def test_job_class_with_a_non_positive_timeout_fails_at_class_creation(timeout):
    """`timeout=` must be a positive number of seconds."""
    with pytest.raises(delta.ConfigError, match=r"timeout of Slow must be > 0 seconds"):

        class Slow(delta.Job, kind="slow", timeout=timeout):
            pass


def test_job_class_keywords_set_kind_and_timeout():
    """The class keywords become class constants; the default timeout is 60 s."""

    class Fast(delta.Job, kind="fast", timeout=0.2):
        pass

    class Plain(delta.Job, kind="plain"):
        pass

    assert (kind_of(Fast), Fast.timeout) == ("fast", 0.2)
    assert (kind_of(Plain), Plain.timeout) == ("plain", 60.0)


def test_a_job_base_without_kind_cannot_be_enqueued_by_kind():
    """An abstract base (no `kind=`) has no kind; kind_of says how to declare one."""

    class Base(delta.Job):
        pass

    with pytest.raises(delta.ConfigError, match=r"Base has no kind: declare it as `class Base"):
        kind_of(Base)


# ---------------------------------------------------------------- retry backoff


@pytest.mark.parametrize("attempt", [2, 3, 5, 8, 10, 17])
def test_retry_delay_is_attempt_to_the_fourth_within_ten_percent(attempt):
    """Each delay lies within +-10% of attempt**4, and the jitter spreads the delays."""
    rng = Rng(attempt)
    base = float(attempt) ** 4
    delays = [retry_delay(attempt, rng) for _ in range(500)]
    assert all(base * 0.9 <= d <= base * 1.1 for d in delays)
    assert min(delays) < base * 0.95
    assert max(delays) > base * 1.05
    assert statistics.mean(delays) == pytest.approx(base, rel=0.02)


def test_retry_delay_grows_with_the_attempt():
    """The typical delay grows like attempt**4: doubling the attempt multiplies it by ~16."""
    rng = Rng(1)

    def typical(attempt: int) -> float:
        return statistics.median(retry_delay(attempt, rng) for _ in range(301))

    assert typical(4) / typical(2) == pytest.approx(16, rel=0.1)
    assert typical(10) / typical(5) == pytest.approx(16, rel=0.1)
    assert typical(3) > typical(2) > typical(1)


@pytest.mark.parametrize("attempt", [0, 1])
def test_retry_delay_is_never_below_half_a_second(attempt):
    """Even the first retries wait at least 0.5 s."""
    rng = Rng(0)
    delays = [retry_delay(attempt, rng) for _ in range(500)]
    assert min(delays) >= 0.5
    assert max(delays) <= 1.1


@pytest.mark.parametrize("attempt", [70, 1_000, 32_767])
def test_retry_delay_is_capped_at_a_day_plus_jitter(attempt):
    """Past the cap (a day) the delay stops growing; jitter still spreads it by +-10%."""
    rng = Rng(2)
    delays = [retry_delay(attempt, rng) for _ in range(500)]
    assert all(MAX_RETRY_DELAY * 0.9 <= d <= MAX_RETRY_DELAY * 1.1 for d in delays)
    assert MAX_RETRY_DELAY == 24 * 3600.0


def test_retry_delay_with_a_seeded_rng_is_reproducible():
    """The same rng seed gives the same delays (the jitter comes only from the rng)."""
    first = [retry_delay(a, Rng(42)) for a in range(1, 10)]
    second = [retry_delay(a, Rng(42)) for a in range(1, 10)]
    assert first == second
