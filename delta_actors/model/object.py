"""`delta.Object`: a user type mirrored from an external system."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from delta_actors.errors import ConfigError
from delta_actors.model.kinds import Kinded


class Object(Kinded):
    """Base class of the objects that controllers keep in sync: a msgspec Struct with a kind.

    Example::

        class User(delta.Object, kind="user"):
            email: str
            updated_at: int = 0

            def id(self) -> str:
                return self.email

            def compare(self, stored: "User") -> int:   # optional
                return self.updated_at - stored.updated_at

    `id()` must return a non-empty string unique within the kind; an object whose id is a
    field of its own may instead declare it as a field named `id` (`id: str`), and then
    defines no method. `compare(stored)` is
    optional: > 0 when this object is newer than the stored one, 0 when unchanged, < 0 when
    stale (it is then not stored). Without it, a content hash decides. `created_at()` is
    optional: the external system's creation time, used as an informer cursor.
    """

    @classmethod
    def check_kinded(cls) -> None:
        """Refuse, when the class is made, a concrete object type without its own id()
        (a method, or a field named `id`)."""
        if cls.id is Object.id and "id" not in cls.__struct_fields__:
            raise ConfigError(
                f"{cls.__qualname__} has a kind but no id(): define `def id(self) -> str` "
                "returning its id, unique within the kind, or a field `id: str`"
            )

    def id(self) -> str:
        """Return the object's id, unique within its kind."""
        raise NotImplementedError(f"{type(self).__qualname__} must define id() -> str")

    def compare(self, stored: Any) -> int:
        """Return > 0 if newer than `stored`, 0 if unchanged, < 0 if stale."""
        raise NotImplementedError

    def created_at(self) -> datetime | None:
        """Return when the external system created the object, if it knows."""
        return None


def id_of(obj: Object) -> Any:
    """The id of `obj`: its `id` field where it declares one, else what its id() returns
    (checked by the caller: a non-empty string)."""
    if "id" in obj.__struct_fields__:
        return getattr(obj, "id")  # noqa: B009 (the field, which shadows the method)
    return obj.id()


def has_compare(cls: type[Object]) -> bool:
    """Return whether `cls` defines its own compare()."""
    return cls.compare is not Object.compare
