"""twistd plugin: `twistd -n archiverd --config archiverd.toml`."""

from twisted.application.service import ServiceMaker

archiverd = ServiceMaker(
    "archiverd",
    "archiverd.tap",
    "Archive cache: streams repository archives from VCS hosts into storage.",
    "archiverd",
)
