"""Classroom actions from the console: lock, unlock, a message, for one's own groups.

The decision is gateway.commands.local.authorise (the local policy); this page
only collects the form and shows where the action stands.
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.commands.local import CLASSROOM_ACTIONS, authorise, groups_allowed
from gateway.errors import RejectedInput
from gateway.school_console.accounts import TEACHER
from gateway.school_console.common import actor_of, form_text, services_of
from gateway.web.i18n import N_
from gateway.web.stack import redirect, requires, stack_of

log = logging.getLogger(__name__)

REFUSALS = {
    "not_classroom": N_("Only lock, unlock and a message can be sent from here."),
    "not_your_group": N_("You can act only on the groups you teach."),
    "bad_field": N_("The group or the message is not valid (a message has 1 to 1000 characters)."),
    "missing_field": N_("Write the message to show."),
    "queue_full": N_("Too many commands still wait for tablets. Try again later."),
}


@requires(TEACHER)
async def classroom(request: web.Request) -> web.StreamResponse:
    box = services_of(request)
    actor = await actor_of(request)
    rows = await box.db.fetch_all(
        "SELECT group_name, count(*), coalesce(sum(online), 0) FROM shadow "
        "WHERE group_name != '' GROUP BY group_name ORDER BY group_name"
    )
    counts = {r[0]: (int(r[1]), int(r[2])) for r in rows}
    allowed = groups_allowed(actor, set(counts) | set(actor.groups))
    groups = [
        {"name": g, "known": counts.get(g, (0, 0))[0], "online": counts.get(g, (0, 0))[1]}
        for g in allowed
    ]
    return await stack_of(request).render(
        request,
        "classroom.html",
        {"groups": groups, "actions": CLASSROOM_ACTIONS, "page": "classroom"},
    )


@requires(TEACHER)
async def act(request: web.Request) -> web.StreamResponse:
    box = services_of(request)
    stack = stack_of(request)
    actor = await actor_of(request)
    form = await request.post()
    action = form_text(form, "action", 20)
    group = form_text(form, "group", 64)
    params = {"text": form_text(form, "text", 1000)} if action == "message" else {}
    try:
        queued = await box.local_actions.submit(authorise(actor, action, group, params))
    except RejectedInput as exc:
        log.warning("%s (%s): classroom action refused: %s", actor.name, actor.role, exc)
        status = 403 if exc.reason in ("not_classroom", "not_your_group") else 400
        return await stack.error_page(request, status, REFUSALS.get(exc.reason, N_("Refused.")))
    log.info(
        "%s (%s): %s for group %s, %d tablets (%s)",
        actor.name,
        actor.role,
        action,
        group,
        len(queued.devices),
        queued.command_id,
    )
    return redirect(f"/commands/{queued.command_id}")
