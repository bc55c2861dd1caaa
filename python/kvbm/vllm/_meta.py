"""The metadata the scheduler half hands the worker half each step (in-process objects:
the TokenSequence of a save is passed as is)."""

from dataclasses import dataclass, field
from typing import Any, List

from ._base import KVConnectorMetadata


@dataclass
class LoadSpec:
    """Load blocks with these sequence hashes into these engine block ids."""

    request_id: str
    hashes: List[int]
    block_ids: List[int]


@dataclass
class SaveSpec:
    """Save engine blocks block_ids[i] as block i of the request's TokenSequence."""

    request_id: str
    sequence: Any  # kvbm.TokenSequence
    block_ids: List[int]


@dataclass
class KvbmConnectorMetadata(KVConnectorMetadata):
    loads: List[LoadSpec] = field(default_factory=list)
    saves: List[SaveSpec] = field(default_factory=list)
    load_async: bool = False
