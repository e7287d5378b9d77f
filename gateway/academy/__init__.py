"""The academy side, as a reference for academy platforms: keys, signing, sending
commands to a school and watching what its gateway sends back
(``python -m gateway academy ...``)."""
