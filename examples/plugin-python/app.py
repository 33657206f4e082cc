"""A Chengis notifier written in Python: one line per build event into the build's log, with an
optional prefix from its configuration. Built into a WebAssembly component by componentize-py
for the same `chengis:plugin@0.1.0` notifier world as the Rust plugins (see build.sh)."""

import wit_world
from wit_world.imports import config, log, types
from componentize_py_types import Err


class WitWorld(wit_world.WitWorld):
    def manifest(self) -> types.Manifest:
        return types.Manifest(
            name="py-console",
            version="0.1.0",
            description="Writes one line per build event (a notifier written in Python)",
            kinds=[types.Kind.NOTIFIER],
            capabilities=[],
            config=[
                types.ConfigField(
                    name="prefix",
                    description="Text put before every line",
                    required=False,
                    default="[py]",
                )
            ],
        )

    def notify(self, event: wit_world.Event) -> None:
        build = event.build
        if not build.pipeline:
            raise Err(types.Failure(message="the event names no pipeline", diagnostics=[]))
        prefix = config.get("prefix") or "[py]"
        what = event.kind.name.lower().replace("_", "-")
        line = f"{prefix} {what}: {build.pipeline} #{build.number} {build.status.name.lower()}"
        if event.job is not None:
            line += f" (job {event.job.name})"
        log.log(log.Level.INFO, line)
