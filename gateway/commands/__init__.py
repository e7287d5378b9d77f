"""Command flow: academy -> gateway -> tablets -> academy.

envelope.py   verify a signed envelope into a Command (pure)
actions.py    the actions and their parameters (pure)
progress.py   delivery states, tablet results, progress and upstream bodies (pure)
queue.py      the durable queue in SQLite (commands, one delivery row per tablet)
intake.py     academy envelopes: verify, commit, then acknowledge
delivery.py   publish deliveries to online tablets; expire what is overdue
results.py    tablet results: validate, commit, relay upstream, then acknowledge
lab.py        run the gateway as a subprocess (kill tests, benchmark)
"""
