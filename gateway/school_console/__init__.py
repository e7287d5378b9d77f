"""The school's own web console, served by the gateway on its LAN HTTP port.

For the school's IT contact (everything) and its teachers (classroom actions
and the tablets of their groups). Built on the shared web stack
(gateway.web): this package holds only the box's pages, its SQLite account
store, and the at-a-glance decisions.
"""
