"""A/B system updates of the box with RAUC (docs/operations.md, "System updates").

The flow, each step in its own module:

- a signed RAUC bundle is an item of kind ``system`` of the content manifest
  (gateway.cache.manifest): the update cache fetches it like any item
  (resumable, hash-checked, under the uplink budget, in off-peak windows);
- ``decision.choose_update`` (pure) says whether this box should install it
  now: complete and hash-checked, its compatible is this box's, a version
  other than the running one, never refused or rolled back before, inside
  ``system_update.window``;
- the gateway (unprivileged, ``updater.SystemUpdater``) then writes
  ``<state_dir>/system-update/request.json`` (``files``);
- root's ``school-gateway-system-update.service`` (``install.install_requested``)
  verifies the bundle with ``rauc info`` against the keyring, checks compatible
  and sha256, runs ``rauc install``, records the outcome in ``outcome.json``
  and reboots;
- on every boot ``school-gateway-health-check.service`` (``health.run_health_check``)
  judges the first boot of a new slot (gateway READY, broker up, a tablet-like
  MQTT connection) and marks it good or bad (then reboots: the bootloader falls
  back); it records ``rolled-back`` when the box came up on the other slot.

Outcomes (``outcomes.OUTCOMES``) travel upstream in every summary (the
``system`` block), in ``python -m gateway status`` and on the box's console.
"""
