"""The recovery's config section: ``[recovery]``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from daemon.core.config import NodeConfig, option


@dataclass(frozen=True)
class RecoveryConfig:
    playbooks: Path = option(Path("/etc/lifeline/playbooks"),
                             doc="Directory of signed playbooks (NAME.toml with NAME.toml.sig beside it).")
    keyring: Path = option(Path("/etc/lifeline/keyring.toml"),
                           doc="Trusted signing keys, the threshold (m of n), revocations, the exec allow-list.")
    triggers: bool = option(True, doc="Start a playbook when an event matches one of its triggers (false: by "
                            "hand only, `lifeline playbook run`).")
    on_busy: Literal["refuse", "wait"] = option(
        "refuse", doc='A second playbook while one runs: "refuse" it (logged, audited) or "wait" for the first.')
    audit_log: Path | None = option(None, doc="The hash-chained audit log (default STATE_DIR/recovery/audit.jsonl).")


class RecoverySettings(Protocol):
    """What the recovery service reads of the root config (:class:`daemon.config.Config` is one)."""

    @property
    def node(self) -> NodeConfig: ...

    @property
    def recovery(self) -> RecoveryConfig | None: ...
