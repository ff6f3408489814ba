"""The ``proxistore`` command line (entry point :func:`proxistore.cli.main.main`).

One module per command group: ``data`` (collections, insert, search, get, delete), ``admin``
(flush, compact, stats), ``config_cmd``, ``plugins_cmd``, ``wal_cmd``, ``demo``; ``output``
renders tables and JSON, ``sources`` reads input files, ``common`` opens the database.
"""
