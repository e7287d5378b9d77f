"""School edge gateway: update cache, command broker and state relay for one school.

The three flows live in their own packages: ``state`` and ``relay`` (tablets ->
academy), ``commands`` (academy -> tablets), ``cache`` (origin -> tablets).
``broker`` holds the MQTT adapter, ``store`` the SQLite adapter.
"""

__version__ = "0.1.0"
