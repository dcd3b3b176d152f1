"""Entity: what features describe (a user, a merchant), identified by its join keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from featurestore.errors import DefinitionError
from featurestore.types import DType, dtype_from_name


@dataclass(frozen=True, eq=True)
class Entity:
    """A name plus the join-key columns whose values identify one instance (e.g. ``user_id``)."""

    name: str
    join_keys: tuple[str, ...] = ()
    value_type: DType | None = None
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict, hash=False)
    owner: str = ""

    def __init__(
        self,
        name: str,
        join_keys: list[str] | tuple[str, ...] | None = None,
        *,
        value_type: DType | None = None,
        description: str = "",
        tags: dict[str, str] | None = None,
        owner: str = "",
    ) -> None:
        if not name or not isinstance(name, str):
            raise DefinitionError("an Entity needs a non-empty name")
        keys = tuple(join_keys or ())
        if not keys:
            raise DefinitionError(
                f"entity '{name}' has no join keys; add join_keys=['{name}_id'] (the column "
                "that identifies it)"
            )
        if len(set(keys)) != len(keys):
            raise DefinitionError(f"entity '{name}' repeats a join key: {list(keys)}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "join_keys", keys)
        object.__setattr__(self, "value_type", value_type)
        object.__setattr__(self, "description", description)
        object.__setattr__(self, "tags", dict(tags or {}))
        object.__setattr__(self, "owner", owner)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "join_keys": list(self.join_keys),
            "value_type": self.value_type.name if self.value_type else None,
            "description": self.description,
            "tags": self.tags,
            "owner": self.owner,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entity:
        vt = d.get("value_type")
        return cls(
            d["name"],
            d["join_keys"],
            value_type=dtype_from_name(vt) if vt else None,
            description=d.get("description", ""),
            tags=d.get("tags") or {},
            owner=d.get("owner", ""),
        )
